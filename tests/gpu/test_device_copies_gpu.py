"""Copies between device allocations and migration on real GPUs: within one GPU always; peer to
peer and migration between GPUs where the machine has two or more (skipped, and reported as
skipped by run.sh, on a one-GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest

import vramobs
from vramobs import stats

MIB, GIB = 1 << 20, 1 << 30


def two_gpus() -> None:
    if vramobs.device_count() < 2:
        pytest.skip("needs two GPUs")


@pytest.mark.parametrize("nbytes, src_offset, dst_offset", [(4093, 3, 1), (64 * MIB + 7, 5, 129)])
def test_copy_within_the_gpu(random_bytes, nbytes: int, src_offset: int, dst_offset: int) -> None:
    data = random_bytes(nbytes)
    before = stats.op_stats(0)["memcpy_d2d"]
    with vramobs.alloc(nbytes + src_offset) as src, vramobs.alloc(nbytes + dst_offset) as dst:
        src.copy_from(data, src_offset)
        dst.copy_from(src, dst_offset, src_offset=src_offset, nbytes=nbytes)
        back = np.empty(nbytes, dtype=np.uint8)
        dst.copy_to(back, dst_offset)
        assert np.array_equal(back, data)
    after = stats.op_stats(0)["memcpy_d2d"]
    assert (after.calls - before.calls, after.bytes_ok - before.bytes_ok) == (1, nbytes)
    assert vramobs.copy_path(0, 0) == "d2d"


def test_copy_within_the_gpu_follows_torch_work(random_bytes) -> None:
    """A copy issued after PyTorch work on the default stream sees that work's result."""
    torch = pytest.importorskip("torch")
    n = 32 * MIB
    data = random_bytes(n)
    with vramobs.to_device(data) as src, vramobs.alloc(n) as dst:
        view = torch.as_tensor(src, device="cuda")
        view.add_(1)  # a kernel on the default stream, not waited for
        dst.copy_from(src)
        assert np.array_equal(np.frombuffer(dst.to_bytes(), np.uint8), data + np.uint8(1))


def test_peer_copies_both_ways(random_bytes) -> None:
    two_gpus()
    path = vramobs.copy_path(0, 1)
    assert vramobs.copy_path(1, 0) == path
    print(f"copy path between GPU 0 and GPU 1: {path}")
    n = 256 * MIB + 3
    data = random_bytes(n)
    before = stats.op_stats(-1)[f"memcpy_{path}"].calls
    with vramobs.to_device(data, device=0) as a, vramobs.alloc(n, device=1) as b:
        b.copy_from(a)
        a.copy_from(np.zeros(n, np.uint8))
        a.copy_from(b)
        back = np.empty(n, dtype=np.uint8)
        a.copy_to(back)
        assert np.array_equal(back, data)
    assert stats.op_stats(-1)[f"memcpy_{path}"].calls - before == 2


def test_migration_of_a_multi_gib_buffer(random_bytes) -> None:
    two_gpus()
    n = 3 * GIB + 5
    data = random_bytes(n)
    free0 = vramobs.get_info(0).free
    buf = vramobs.to_device(data, device=0, tag="weights")
    moved = buf.migrate(1)
    try:
        assert buf.closed and moved.device == 1 and moved.tag == "weights"
        back = np.empty(n, dtype=np.uint8)
        moved.copy_to(back)
        assert np.array_equal(back, data)
        assert stats.registry_stats(0).live_count == 0
        assert stats.registry_stats(1).by_tag == {"weights": (1, n)}
        # the source's VRAM went back to the driver
        assert abs(vramobs.get_info(0).free - free0) <= 2 * MIB
        home = moved.migrate(0)
        moved = home
        home.copy_to(back)
        assert np.array_equal(back, data)
    finally:
        moved.close()


def test_failed_migration_leaves_the_source(random_bytes) -> None:
    two_gpus()
    n = 64 * MIB
    data = random_bytes(n)
    free1 = vramobs.get_info(1).free
    ballast = vramobs.alloc(free1 - 32 * MIB, device=1)  # leaves less than n on GPU 1
    try:
        with vramobs.to_device(data, device=0) as buf:
            with pytest.raises(vramobs.OutOfMemoryError):
                buf.migrate(1)
            assert not buf.closed
            back = np.empty(n, dtype=np.uint8)
            buf.copy_to(back)
            assert np.array_equal(back, data)
            assert stats.registry_stats(1).live_count == 1  # the ballast only
    finally:
        ballast.close()
