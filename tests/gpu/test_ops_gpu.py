"""The spec's rules on real VRAM: round trips, refusals that write nothing, OOM, no leaks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import vramobs
from vramobs import raw, stats

MIB, GIB = 1 << 20, 1 << 30


def test_backend_is_cuda_on_a_real_device(cuda_device: vramobs.DeviceInfo) -> None:
    assert vramobs.backend() == "cuda"
    assert vramobs.backend_diagnostic() == ""
    assert cuda_device.uuid.startswith("GPU-") and len(cuda_device.uuid) == 40
    assert cuda_device.total_bytes > 8 * GIB
    assert cuda_device.compute_capability >= (7, 0)
    assert cuda_device.driver_version >= 12000
    assert vramobs.device_state(0) is vramobs.DeviceState.USABLE


@pytest.mark.parametrize("size", [1, 3, 255, 4097, MIB + 13, 256 * MIB + 7])
def test_round_trip_at_odd_sizes_and_offsets(
    rng: np.random.Generator, random_bytes, size: int
) -> None:
    offset = int(rng.integers(1, 4096))
    data = random_bytes(size)
    with vramobs.alloc(size + offset + 5) as buf:
        buf.copy_from(data, offset=offset)
        back = np.empty_like(data)
        back[:] = random_bytes(size)  # stale bytes must not survive the copy
        buf.copy_to(back, offset=offset)
        assert np.array_equal(back, data)


def test_refused_copy_past_the_end_writes_nothing(random_bytes) -> None:
    before = random_bytes(4096)
    with vramobs.alloc(4096) as buf:
        buf.copy_from(before)
        status = raw.memcpy_h2d(buf.ptr + 4000, random_bytes(200).ctypes.data, 200)
        assert status == 6
        assert np.array_equal(np.frombuffer(buf.to_bytes(), np.uint8), before)
        big = random_bytes(8192)
        assert raw.memcpy_d2h(big.ctypes.data, buf.ptr, 8192) == 6


def test_spec_error_paths_on_the_cuda_backend(random_bytes) -> None:
    assert raw.malloc(0) == (2, 0)
    assert raw.malloc(2**64 - 1) == (2, 0)
    assert raw.free(0) == 0
    host = random_bytes(64)
    with vramobs.alloc(4096) as buf:
        assert raw.memcpy_h2d(0, host.ctypes.data, 64) == 2
        assert raw.memcpy_h2d(buf.ptr, 0, 64) == 2
        assert raw.memcpy_h2d(buf.ptr, host.ctypes.data, 0) == 2
        assert raw.memcpy_h2d(buf.ptr, 2**64 - 8, 64) == 2
        assert raw.free(buf.ptr + 256) == 7  # interior: refused, never reaches cuMemFree
        buf.copy_from(host)  # still usable
        assert raw.memcpy_h2d(buf.ptr + 64 * GIB, host.ctypes.data, 64) == 5
    status, address = raw.malloc(4096)
    assert status == 0 and address
    assert raw.free(address) == 0
    assert raw.free(address) == 0  # idempotent, no driver call
    assert raw.memcpy_h2d(address, host.ctypes.data, 64) == 5  # freed


def test_out_of_memory_is_code_1_null_pointer_and_not_sticky() -> None:
    total = vramobs.get_info().total
    status, address = raw.malloc(total + 16 * GIB)
    assert (status, address) == (1, 0)
    with pytest.raises(vramobs.OutOfMemoryError) as caught:
        vramobs.alloc(total + 16 * GIB)
    assert caught.value.driver_error_name == "CUDA_ERROR_OUT_OF_MEMORY"
    assert vramobs.device_state(0) is vramobs.DeviceState.USABLE
    with vramobs.alloc(MIB) as buf:  # the next allocation succeeds
        assert buf.ptr


def test_get_info_agrees_with_cuda_bindings() -> None:
    cudart = pytest.importorskip("cuda.bindings.runtime")
    err, oracle_free, oracle_total = cudart.cudaMemGetInfo()
    assert int(err) == 0
    ours = vramobs.get_info()
    assert ours.total == oracle_total
    assert abs(ours.free - oracle_free) <= 64 * MIB  # other processes may move free a little
    with vramobs.alloc(2 * GIB):
        during = vramobs.get_info()
        err, oracle_free, _ = cudart.cudaMemGetInfo()
        assert abs(during.free - oracle_free) <= 64 * MIB
        assert ours.free - during.free >= 2 * GIB


def test_no_growth_after_thousands_of_malloc_free_cycles(rng: np.random.Generator) -> None:
    sizes = rng.integers(1, 8 * MIB, 4000)
    for n in sizes[:50]:  # settle the driver's own bookkeeping
        vramobs.alloc(int(n)).close()
    before = vramobs.get_info().free
    for n in sizes:
        raw_status, address = raw.malloc(int(n))
        assert raw_status == 0
        assert raw.free(address) == 0
    assert vramobs.get_info().free == before


def test_threads_copy_and_verify_concurrently() -> None:
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                n = int(rng.integers(1, 2 * MIB))
                data = rng.integers(0, 256, n, dtype=np.uint8)
                with vramobs.alloc(n) as buf:
                    buf.copy_from(data)
                    assert np.array_equal(np.frombuffer(buf.to_bytes(), np.uint8), data)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    seeds = np.random.default_rng().integers(0, 2**32, 8)
    threads = [threading.Thread(target=worker, args=(int(s),)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_copy_racing_free_never_touches_freed_memory(random_bytes) -> None:
    n = 64 * MIB
    data = random_bytes(n)
    outcomes: set[int] = set()
    for _ in range(20):
        status, address = raw.malloc(n)
        assert status == 0
        assert raw.memcpy_h2d(address, data.ctypes.data, n) == 0
        back = np.empty_like(data)
        results: list[int] = []
        reader = threading.Thread(
            target=lambda: results.extend(
                raw.memcpy_d2h(back.ctypes.data, address, n) for _ in range(4)
            )
        )
        reader.start()
        assert raw.free(address) == 0
        reader.join()
        outcomes.update(results)
        assert set(results) <= {0, 5}
        if results[0] == 0:
            assert np.array_equal(back, data)
    assert outcomes <= {0, 5}


def test_timing_and_bytes_are_counted_in_c(random_bytes) -> None:
    before = stats.op_stats(0)["memcpy_h2d"]
    data = random_bytes(32 * MIB)
    with vramobs.alloc(data.nbytes) as buf:
        for _ in range(3):
            buf.copy_from(data)
    after = stats.op_stats(0)["memcpy_h2d"]
    assert after.bytes_ok - before.bytes_ok == 3 * data.nbytes
    assert after.latency_ok.count - before.latency_ok.count == 3
    seconds = after.latency_ok.total - before.latency_ok.total
    assert 3 * data.nbytes / seconds > 1e9  # a real copy over PCIe, not a no-op
    assert after.bandwidth_ok.count - before.bandwidth_ok.count == 3
