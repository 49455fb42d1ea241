"""Host-device transfers on a real GPU: staged copies of pageable memory byte for byte at odd
sizes and offsets (small and 64 MiB+), pinned and registered memory (direct), copies in both
directions at once from several threads, and the NUMA node the staging engine chose."""

from __future__ import annotations

import mmap
import threading

import numpy as np
import pytest

import vramobs
from vramobs import pinned

KIB, MIB = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def default_staging():
    """Each test runs with the default staging configuration, restored afterwards."""
    before = pinned.staging_config()
    yield
    pinned.configure_staging(
        threads=before.threads,
        chunk_bytes=before.chunk_bytes,
        min_bytes=before.min_bytes,
        buffers=before.buffers,
    )


def _odd(n: int, shift: int) -> np.ndarray:
    return np.zeros(n + shift, np.uint8)[shift:]


@pytest.mark.parametrize(
    "n",
    [1, 4 * KIB + 1, MIB - 1, MIB, 4 * MIB + 3, 17 * MIB + 4097, 64 * MIB + 1, 257 * MIB - 5],
)
def test_staged_round_trip_byte_for_byte(n: int, random_bytes) -> None:  # type: ignore[no-untyped-def]
    shift, offset = 3, 257
    data = _odd(n, shift)
    data[:] = random_bytes(n)
    before = pinned.host_stats().staged_copies_total
    with vramobs.alloc(n + offset) as dev:
        dev.copy_from(data, offset=offset)
        out = _odd(n, 5)
        dev.copy_to(out, offset=offset)
    assert np.array_equal(out, data)
    staged = pinned.host_stats().staged_copies_total - before
    assert staged == (2 if n >= pinned.staging_config().min_bytes else 0)


def test_every_configuration_shape_copies_exactly(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 24 * MIB + 12345
    data = random_bytes(n)
    with vramobs.alloc(n) as dev:
        for threads, chunk, buffers in ((1, 64 * KIB, 1), (3, MIB, 2), (8, 4 * MIB, 2), (16, 2 * MIB, 4)):
            pinned.configure_staging(threads=threads, chunk_bytes=chunk, buffers=buffers, min_bytes=MIB)
            dev.copy_from(data)
            out = np.empty(n, np.uint8)
            dev.copy_to(out)
            assert np.array_equal(out, data), (threads, chunk, buffers)
            assert pinned.host_stats().staging_bytes >= threads * chunk * buffers
        pinned.configure_staging(threads=0)
        out = np.empty(n, np.uint8)
        dev.copy_to(out)
        assert np.array_equal(out, data)
        assert pinned.host_stats().staging_bytes == 0


def test_pinned_and_registered_copies_are_direct(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 64 * MIB + 7
    before = pinned.host_stats().staged_copies_total
    with vramobs.alloc(n) as dev, pinned.pinned_empty(n) as src, pinned.pinned_empty(n) as dst:
        src.numpy()[:] = random_bytes(n)
        dev.copy_from(src.view)
        dev.copy_to(dst.view)
        assert np.array_equal(dst.numpy(), src.numpy())
        region = mmap.mmap(-1, 64 * MIB)  # whole pages, as the driver wants to register
        host = np.frombuffer(region, np.uint8)
        with pinned.register_host(host):
            dev.copy_to(host)
            assert np.array_equal(host, src.numpy()[: 64 * MIB])
        del host
        region.close()
    assert pinned.host_stats().staged_copies_total == before


def test_both_directions_at_once_from_several_threads(rng) -> None:  # type: ignore[no-untyped-def]
    failures: list[object] = []
    seeds = rng.integers(0, 2**32, 6)

    def worker(seed: int, size: int) -> None:
        local = np.random.default_rng(seed)
        try:
            with vramobs.alloc(size) as dev:
                for _ in range(4):
                    n = int(local.integers(size // 2, size))
                    data = local.integers(0, 256, n, dtype=np.uint8)
                    dev.copy_from(data)
                    out = np.empty(n, np.uint8)
                    dev.copy_to(out)
                    if not np.array_equal(out, data):
                        failures.append((seed, n))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [
        threading.Thread(target=worker, args=(int(s), (3 + i) * 16 * MIB + i))
        for i, s in enumerate(seeds)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_wiped_allocation_clears_staging(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 32 * MIB
    with vramobs.alloc(n, wipe=True) as dev:
        before = pinned.host_stats().staging_cleared_bytes_total
        dev.copy_from(random_bytes(n))
        assert pinned.host_stats().staging_cleared_bytes_total > before


def test_numa_node_is_reported() -> None:
    nodes = {d: pinned.host_numa_node(d) for d in range(vramobs.device_count())}
    print(f"host NUMA node per device: {nodes}")
    assert all(node >= -1 for node in nodes.values())
