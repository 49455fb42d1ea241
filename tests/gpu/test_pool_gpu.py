"""The device memory pool on real VRAM: a hit takes no memory from the driver, a trim gives
it back, out-of-memory releases the cache before failing, and a reused block is wiped."""

from __future__ import annotations

import timeit

import numpy as np
import pytest

import vramobs

MIB = 1 << 20


@pytest.fixture
def pool():  # type: ignore[no-untyped-def]
    vramobs.trim_pool()
    yield vramobs.enable_pool
    vramobs.disable_pool()
    after = vramobs.pool_stats(0)
    assert (after.cached_bytes, after.live_blocks) == (0, 0)


def test_a_hit_takes_no_memory_and_a_trim_gives_it_back(pool) -> None:  # type: ignore[no-untyped-def]
    pool(1 << 30)
    size = 256 * MIB
    before = vramobs.get_info().free
    with vramobs.alloc(size) as buf:
        address = buf.ptr
    cached = vramobs.get_info().free
    assert before - cached >= size  # the block stays with the process
    hits = vramobs.pool_stats(0).hits_total
    with vramobs.alloc(size - 12345) as again:
        assert again.ptr == address
        assert vramobs.get_info().free == cached  # served without the driver
    assert vramobs.pool_stats(0).hits_total == hits + 1
    vramobs.trim_pool()
    assert vramobs.get_info().free - cached >= size


def test_out_of_memory_releases_the_cache(pool) -> None:  # type: ignore[no-untyped-def]
    pool(1 << 40)
    free = vramobs.get_info().free
    cached = free * 6 // 10 // (2 * MIB) * (2 * MIB)
    vramobs.alloc(cached).close()
    wanted = free * 7 // 10  # more than is free beside the cache, less than with it
    before = vramobs.pool_stats(0)
    with vramobs.alloc(wanted):
        after = vramobs.pool_stats(0)
    assert after.oom_retries_total - before.oom_retries_total == 1
    assert after.oom_give_ups_total == before.oom_give_ups_total
    assert after.released_bytes_total - before.released_bytes_total == cached


def test_a_reused_block_holds_no_old_bytes_under_wipe(pool, random_bytes) -> None:  # type: ignore[no-untyped-def]
    pool(1 << 30)
    previous = vramobs.wipe_on_free()
    try:
        for wipe in (False, True):
            vramobs.set_wipe_on_free(wipe)
            secret = random_bytes(4096)
            with vramobs.to_device(secret) as buf:
                address = buf.ptr
            with vramobs.alloc(4096) as again:
                assert again.ptr == address
                back = np.frombuffer(again.to_bytes(), np.uint8)
            assert np.array_equal(back, np.zeros_like(back) if wipe else secret)
    finally:
        vramobs.set_wipe_on_free(previous)


def test_pooled_pair_from_python(pool) -> None:  # type: ignore[no-untyped-def]
    """Informational: the Python alloc+close pair with the pool off and on."""
    def pair() -> None:
        vramobs.alloc(4096).close()

    for on in (False, True):
        if on:
            pool(64 * MIB)
        pair()
        best = min(timeit.repeat(pair, number=20000, repeat=5)) / 20000
        print(f"alloc+close of 4 KiB from Python, pool {'on' if on else 'off'}: {best * 1e6:.2f} us")
