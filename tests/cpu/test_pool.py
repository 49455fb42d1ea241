"""The device memory pool and batch allocation: reuse without a driver call, yet every reuse is
a new allocation (generation, bounds of its own size), wipe before caching, the cache's bound,
trim, out-of-memory releasing the cache, backend switches, failed devices, threads; and
all-or-nothing batches."""

import ctypes
import textwrap
import threading

import numpy as np
import pytest

import vramobs
from vramobs import _native, leaks, stats

MIB = 1 << 20
LIB = _native.lib


def round_up(n, a):
    return -(-n // a) * a


def class_size(n):
    """The pool's block size for a request (native/src/pool.c)."""
    if n <= 1024:
        return round_up(n, 256)
    if n <= MIB:
        base = 1 << ((n - 1).bit_length() - 1)
        return base + round_up(n - base, base // 4)
    return round_up(n, 2 * MIB)


def in_class(rng, size):
    """A random request of the class whose block size is ``size``."""
    if size <= 1024:
        floor = size - 256
    elif size <= MIB:
        floor = size - (1 << ((size - 1).bit_length() - 1)) // 4
    else:
        floor = max(size - 2 * MIB, MIB)
    return int(rng.integers(floor + 1, size + 1))


def last_error_reason():
    info = _native.ErrorInfo()
    LIB().vram_last_error(ctypes.byref(info))
    return LIB().vram_reason_name(info.reason).decode()


def host_used():
    info = vramobs.get_info()
    return info.total - info.free


@pytest.fixture
def pool():
    """The pool of device 0 on, empty; off (cache released) afterwards."""
    vramobs.trim_pool()
    yield vramobs.enable_pool
    vramobs.disable_pool()
    after = vramobs.pool_stats(0)
    assert (after.cached_bytes, after.live_blocks, after.slack_bytes) == (0, 0, 0)


@pytest.fixture
def wipe_policy():
    before = vramobs.wipe_on_free()
    yield vramobs.set_wipe_on_free
    vramobs.set_wipe_on_free(before)


def malloc_ex(nbytes):
    ptr, generation = ctypes.c_void_p(), ctypes.c_uint64()
    assert LIB().vram_malloc_ex(ctypes.byref(ptr), nbytes, 0, ctypes.byref(generation)) == 0
    return ptr.value, generation.value


def test_class_sizes_follow_the_driver_rounding():
    assert [class_size(n) for n in (1, 256, 257, 1024, 1025, 2048, 2049, 3000)] == [
        256, 256, 512, 1024, 1280, 2048, 2560, 3072]
    assert class_size(MIB) == MIB and class_size(MIB + 1) == 2 * MIB
    # At most a quarter over the request, and whole 2 MiB pages above 1 MiB.
    for n in range(1025, MIB, 977):
        assert n <= class_size(n) <= n * 1.25 + 256


def test_a_freed_block_serves_the_next_allocation_of_its_class(pool, rng):
    pool(64 * MIB)
    size = class_size(int(rng.integers(1025, 8 * MIB)))
    before = vramobs.pool_stats(0)
    first = vramobs.alloc(in_class(rng, size))
    address, generation = first.ptr, first.generation
    used = host_used()
    first.close()
    assert host_used() == used  # kept: no release
    n = in_class(rng, size)
    with vramobs.alloc(n) as again:
        assert (again.ptr, again.nbytes) == (address, n)
        assert again.generation > generation
        assert host_used() == used  # and taken back without an allocation
        registry = stats.registry_stats(0)
        assert registry.live_bytes >= n
        after = vramobs.pool_stats(0)
        assert after.hits_total - before.hits_total == 1
        assert after.misses_total - before.misses_total == 1
        assert after.live_blocks == 1
        assert after.slack_bytes == size - round_up(n, 256)
        assert after.cached_bytes == 0


def test_a_stale_generation_frees_nothing_once_the_block_is_reused(pool, rng):
    pool(MIB)
    n = int(rng.integers(1, 4096))
    lib = LIB()
    address, old = malloc_ex(n)
    assert lib.vram_free_ex(address, old) == 0
    again, new = malloc_ex(n)
    assert again == address and new != old
    live = stats.registry_stats().live_count
    assert lib.vram_free_ex(address, old) == 0  # already freed: nothing to do
    assert stats.registry_stats().live_count == live
    assert lib.vram_free_ex(address, new + 1000) == 2  # never handed out
    assert last_error_reason() == "invalid_generation"
    assert lib.vram_free_ex(address, new) == 0
    assert stats.registry_stats().live_count == live - 1


def test_bounds_are_the_requested_size_on_a_bigger_block(pool, rng):
    pool(64 * MIB)
    size = class_size(int(rng.integers(2048, 4 * MIB)))
    vramobs.alloc(size).close()  # the block, filled to its end
    n = in_class(rng, size)
    assert n <= size
    address, generation = malloc_ex(n)
    lib = LIB()
    try:
        host = ctypes.create_string_buffer(rng.bytes(size), size)
        watch = stats.op_stats(0)["memcpy_h2d"].refused.get("out_of_bounds", 0)
        assert lib.vram_memcpy_h2d(address, host, n + 1) == 6
        assert lib.vram_memcpy_h2d(address + n - 1, host, 2) == 6
        assert lib.vram_memcpy_d2h(host, address + n, 1) in (5, 6)  # past the end of its own
        assert stats.op_stats(0)["memcpy_h2d"].refused.get("out_of_bounds", 0) - watch == 2
        assert lib.vram_memcpy_h2d(address, host, n) == 0
        back = ctypes.create_string_buffer(n)
        assert lib.vram_memcpy_d2h(back, address, n) == 0
        assert back.raw == host.raw[:n]
    finally:
        assert lib.vram_free_ex(address, generation) == 0


def test_a_block_is_wiped_before_it_enters_the_cache(pool, wipe_policy, rng):
    pool(64 * MIB)
    n = int(rng.integers(1, 2 * MIB))
    secret = rng.integers(1, 256, n, dtype=np.uint8).tobytes()  # no zero byte
    wipe_policy(False)
    with vramobs.to_device(secret) as buf:
        address = buf.ptr
    with vramobs.alloc(n) as again:  # without the wipe the old bytes come back
        assert again.ptr == address
        assert again.to_bytes() == secret
    wipe_policy(True)
    wiped = stats.op_stats(0)["wipe"]
    with vramobs.to_device(secret) as buf:
        assert buf.ptr == address
    after = stats.op_stats(0)["wipe"]
    assert (after.calls - wiped.calls, after.bytes_ok - wiped.bytes_ok) == (1, n)
    assert vramobs.pool_stats(0).cached_blocks == 1
    with vramobs.alloc(n, wipe=False) as again:
        assert again.ptr == address
        assert again.to_bytes() == bytes(n)


def test_the_bound_trim_and_every_counter_follow_a_model(pool, rng):
    """Random allocations and frees over a few classes against a model of the pool."""
    classes = [class_size(int(rng.integers(1, 3 * MIB))) for _ in range(4)]
    bound = int(rng.integers(1, 4)) * max(classes)
    pool(bound)
    start = vramobs.pool_stats(0)
    trims = stats.op_stats(0)["pool_trim"]
    used0 = host_used()
    cached = {c: 0 for c in classes}  # the model: blocks cached per class
    hits = misses = released = 0
    live = []
    for _ in range(400):
        if live and rng.random() < 0.5:
            buf, size = live.pop(int(rng.integers(len(live))))
            buf.close()
            if sum(c * k for c, k in cached.items()) + size <= bound:
                cached[size] += 1
            else:
                released += size
        else:
            size = classes[int(rng.integers(len(classes)))]
            n = in_class(rng, size)
            if cached[size]:
                cached[size] -= 1
                hits += 1
            else:
                misses += 1
            live.append((vramobs.alloc(n), size))
        s = vramobs.pool_stats(0)
        assert s.cached_bytes == sum(c * k for c, k in cached.items()) <= bound
        assert s.cached_blocks == sum(cached.values())
        assert (s.hits_total - start.hits_total, s.misses_total - start.misses_total) == (hits, misses)
        assert s.released_bytes_total - start.released_bytes_total == released
        assert s.live_blocks == len(live)
        assert s.slack_bytes == sum(size - round_up(b.nbytes, 256) for b, size in live)
        assert host_used() - used0 == s.cached_bytes + sum(size for _, size in live)
    for buf, size in live:
        buf.close()
        if sum(c * k for c, k in cached.items()) + size <= bound:
            cached[size] += 1
        else:
            released += size
    total = sum(c * k for c, k in cached.items())
    keep = int(rng.integers(0, total + 1))
    vramobs.trim_pool(keep)
    s = vramobs.pool_stats(0)
    assert s.cached_bytes <= keep
    # Largest classes go first: what stays is the smallest blocks that fit under keep.
    assert s.released_bytes_total - start.released_bytes_total == released + total - s.cached_bytes
    assert host_used() - used0 == s.cached_bytes
    after = stats.op_stats(0)["pool_trim"]
    assert after.calls - trims.calls == 1
    assert after.bytes_ok - trims.bytes_ok == total - s.cached_bytes
    # Lowering the bound releases what is over it, counted as a trim.
    pool(s.cached_bytes // 2)
    assert vramobs.pool_stats(0).cached_bytes <= s.cached_bytes // 2
    assert host_used() - used0 == vramobs.pool_stats(0).cached_bytes


def test_a_block_larger_than_the_bound_and_one_made_with_the_pool_off_go_to_the_driver(pool, rng):
    used0 = host_used()
    n = int(rng.integers(1, MIB))
    unpooled = vramobs.alloc(n)  # pool off
    pool(4 * MIB)
    before = vramobs.pool_stats(0)
    unpooled.close()
    big = vramobs.alloc(int(rng.integers(4 * MIB + 1, 16 * MIB)))
    big.close()
    s = vramobs.pool_stats(0)
    assert (s.cached_bytes, s.cached_blocks) == (0, 0)
    assert s.released_bytes_total - before.released_bytes_total == class_size(big.nbytes)
    assert host_used() == used0


def test_disable_releases_the_cache_and_later_frees(pool, rng):
    pool(64 * MIB)
    used0 = host_used()
    held = vramobs.alloc(int(rng.integers(1, MIB)))
    vramobs.alloc(int(rng.integers(1, MIB))).close()
    vramobs.disable_pool()
    s = vramobs.pool_stats(0)
    assert (s.enabled, s.cached_bytes, s.live_blocks) == (0, 0, 1)
    assert host_used() - used0 == class_size(held.nbytes)
    held.close()
    assert vramobs.pool_stats(0).live_blocks == 0
    assert host_used() == used0


def test_sixteen_threads_with_random_sizes(pool, rng):
    bound = 2 * MIB
    pool(bound)
    before = vramobs.pool_stats(0)
    registry = stats.registry_stats(0)
    used0 = host_used()
    seeds = rng.integers(0, 1 << 62, 16)
    errors, counts = [], []

    def work(seed):
        r = np.random.default_rng(seed)
        made, held = 0, []
        try:
            for _ in range(150):
                if held and r.random() < 0.5:
                    buf, data = held.pop(int(r.integers(len(held))))
                    assert buf.to_bytes() == data  # nobody else wrote into it
                    buf.close()
                    continue
                n = int(r.choice([r.integers(1, 4096), r.integers(1, 300_000), r.integers(1, 3 * MIB)]))
                data = r.bytes(n)
                buf = vramobs.to_device(data)
                made += 1
                held.append((buf, data))
            for buf, data in held:
                assert buf.to_bytes() == data
                buf.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        counts.append(made)

    threads = [threading.Thread(target=work, args=(int(s),)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    s = vramobs.pool_stats(0)
    made = sum(counts)
    assert (s.hits_total - before.hits_total) + (s.misses_total - before.misses_total) == made
    assert s.hits_total > before.hits_total
    assert (s.live_blocks, s.slack_bytes) == (0, 0)
    assert s.cached_bytes <= bound
    assert host_used() - used0 == s.cached_bytes
    after = stats.registry_stats(0)
    assert after.allocs_total - registry.allocs_total == made
    assert after.frees_total - registry.frees_total == made


def test_pool_stats_and_arguments():
    total = vramobs.pool_stats(-1)
    assert total == vramobs.pool_stats(0)  # one host device
    for bad in (-2, 32, "0", True, 1.0):
        with pytest.raises(vramobs.InvalidArgumentError):
            vramobs.pool_stats(bad)
    with pytest.raises(vramobs.InvalidArgumentError) as info:
        vramobs.enable_pool(MIB, device=1)  # a device the backend does not have
    assert info.value.reason == "invalid_device"
    for bad in (-1, 1 << 64, 2.0, None):
        with pytest.raises(vramobs.InvalidArgumentError):
            vramobs.enable_pool(bad)
        with pytest.raises(vramobs.InvalidArgumentError):
            vramobs.trim_pool(bad)
    refused = stats.op_stats(0)["pool_trim"].refused.get("invalid_device", 0)
    assert LIB().vram_pool_trim(7, 0) == 2
    assert stats.op_stats(0)["pool_trim"].refused.get("invalid_device", 0) - refused == 1
    assert LIB().vram_pool_stats_get(0, None, 200) == 2
    small = _native.PoolStats()
    assert LIB().vram_pool_stats_get(0, ctypes.byref(small), ctypes.sizeof(small) - 1) == 2


def test_the_pool_is_exported_in_metrics(pool, rng):
    from prometheus_client import CollectorRegistry

    from vramobs.collector import VramCollector

    registry = CollectorRegistry(auto_describe=False)
    VramCollector(registry)
    pool(64 * MIB)
    n = int(rng.integers(1, 8 * MIB))
    vramobs.alloc(n).close()
    with vramobs.alloc(n):
        pass
    s = vramobs.pool_stats(0)
    samples = {
        sample.name: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("vramobs_pool_")
    }
    assert samples == {
        "vramobs_pool_cached_bytes": class_size(n),
        "vramobs_pool_hits_total": s.hits_total,
        "vramobs_pool_misses_total": s.misses_total,
        "vramobs_pool_released_bytes_total": s.released_bytes_total,
        "vramobs_pool_oom_retries_total": s.oom_retries_total,
        "vramobs_pool_oom_give_ups_total": s.oom_give_ups_total,
        "vramobs_pool_dropped_bytes_total": s.dropped_bytes_total,
    }


# -- out of memory and backends, in children ---------------------------------------------------

def on_host(*parts):
    """Child code on the host backend: the parts, each dedented, in order."""
    return "\n".join(["vramobs.use_backend('host')"] + [textwrap.dedent(p) for p in parts])


def test_out_of_memory_releases_the_cache_then_tries_the_request_itself(child):
    # 786432 + 250112 bytes: room for one 700,000-byte block and a 240,128-byte allocation.
    result = child(
        on_host(
            r"""
        def pool():
            return vramobs.pool_stats(0)

        vramobs.enable_pool(1 << 20)
        vramobs.alloc(600_000).close()                   # a 655,360-byte block, cached
        check("cached", pool().cached_bytes, 655_360)
        b = vramobs.alloc(700_000)                      # 786,432: fits once the cache is released
        s = pool()
        check("released on oom", (s.cached_bytes, s.released_bytes_total), (0, 655_360))
        check("retried", (s.oom_retries_total, s.oom_give_ups_total, s.misses_total), (1, 0, 2))
        check("each counted as one malloc", by_status("malloc"), {"VRAM_SUCCESS": 2})
        y = vramobs.alloc(240_000)                      # its class (262,144) does not fit; it does
        s = pool()
        check("exact retry", (s.oom_retries_total, s.oom_give_ups_total, s.live_blocks), (2, 0, 1))
        raises("give up", vramobs.OutOfMemoryError, vramobs.alloc, 300_000)
        s = pool()
        check("gave up", (s.oom_retries_total, s.oom_give_ups_total), (3, 1))
        check("failed malloc", by_status("malloc").get("VRAM_ERR_ALLOCATION_FAILED"), 1)
        y.close()                                       # made unpooled: to the driver
        check("unpooled not cached", pool().cached_bytes, 0)
        b.close()
        check("cached again", pool().cached_bytes, 786_432)
        info = vramobs.get_info()
        check("host used is the cache", info.total - info.free, 786_432)
        check("nothing live", stats.registry_stats().live_count, 0)
        finish()
        """
        ),
        VRAMOBS_HOST_CAPACITY=786_432 + 250_112,
    )
    assert result == {}


def test_a_backend_switch_waits_for_the_cache(child):
    result = child(
        on_host(
            r"""
        vramobs.enable_pool(1 << 30)
        vramobs.alloc(5000).close()
        raises("busy while cached", vramobs.BusyError, vramobs.use_backend, "cuda")
        check("still host", vramobs.backend(), "host")
        vramobs.use_backend("host")  # the same backend: nothing changes
        vramobs.trim_pool()
        vramobs.use_backend("cuda")
        check("switched once empty", vramobs.backend(), "cuda")
        check("pool stays on", vramobs.pool_stats(0).enabled, 1)
        with vramobs.alloc(5000) as buf:  # a cuda block now
            address = buf.ptr
        check("fake driver holds the cached block", live(), 1)
        raises("busy again", vramobs.BusyError, vramobs.use_backend, "host")
        vramobs.disable_pool()
        check("released", live(), 0)
        finish()
        """
        )
    )
    assert result == {}


# -- the CUDA backend over the fake driver -----------------------------------------------------


def test_the_driver_frees_only_on_trim_and_overflow(child):
    result = child(
        r"""
        n = 65536
        vramobs.enable_pool(3 * n)
        before = call_counts()
        for _ in range(20):
            vramobs.alloc(n).close()
        d = delta(call_counts(), before)
        check("one cuMemAlloc", d.get("cuMemAlloc"), 1)
        check("no cuMemFree", d.get("cuMemFree", 0), 0)
        check("the fake holds the block", live(), 1)
        held = [vramobs.alloc(n) for _ in range(5)]
        for buf in held:
            buf.close()
        d = delta(call_counts(), before)
        check("four more cuMemAlloc", d.get("cuMemAlloc"), 5)
        check("overflow frees", d.get("cuMemFree"), 2)
        check("three cached", vramobs.pool_stats(0).cached_blocks, 3)
        vramobs.trim_pool()
        d = delta(call_counts(), before)
        check("trim frees", d.get("cuMemFree"), 5)
        check("fake empty", live(), 0)
        finish()
        """
    )
    assert result == {}


def test_out_of_memory_in_the_driver_releases_the_cache(child):
    result = child(
        r"""
        vramobs.enable_pool(1 << 30)
        vramobs.alloc(8 * MiB).close()
        before = call_counts()
        buf = vramobs.alloc(10 * MiB)  # 15 MiB usable: only once the cached 8 MiB are freed
        d = delta(call_counts(), before)
        check("alloc, free, alloc", (d.get("cuMemAlloc"), d.get("cuMemFree")), (2, 1))
        s = vramobs.pool_stats(0)
        check("counted", (s.oom_retries_total, s.oom_give_ups_total, s.released_bytes_total),
              (1, 0, 8 * MiB))
        buf.close()
        vramobs.disable_pool()
        check("fake empty", live(), 0)
        finish()
        """,
        FAKECUDA_TOTAL_BYTES=16 * (1 << 20),
    )
    assert result == {}


def test_a_failed_device_drops_its_cache_without_a_driver_call(child):
    result = child(
        r"""
        vramobs.enable_pool(1 << 30)
        vramobs.alloc(5000).close()                           # 5120 bytes cached
        buf = vramobs.alloc(100)
        inject("cuMemcpyHtoD", 700, nth=1, sticky=True)        # illegal address: sticky
        raises("latched", vramobs.DeviceFailedError, buf.copy_from, b"x")
        before = call_counts()
        s = vramobs.pool_stats(0)
        check("dropped", (s.cached_bytes, s.dropped_bytes_total, s.live_blocks), (0, 5120, 0))
        raises("lost", vramobs.DeviceFailedError, buf.close)
        raises("trim on a failed device", vramobs.DeviceFailedError, vramobs.trim_pool, 0, 0)
        check("no driver call", delta(call_counts(), before), {})
        check("lost counted", stats.registry_stats().lost_total, 1)
        finish()
        """
    )
    assert result == {}


# -- batches -----------------------------------------------------------------------------------


def test_a_batch_allocates_every_buffer(op_watch, rng):
    count = int(rng.integers(1, 20))
    sizes = [int(n) for n in rng.integers(1, 2 * MIB, count)]
    watch = op_watch(0)
    buffers = vramobs.empty_batch(sizes, tag="kv_cache")
    try:
        assert [b.nbytes for b in buffers] == sizes
        assert len({b.ptr for b in buffers}) == count
        assert len({b.generation for b in buffers}) == count
        assert {b.tag for b in buffers} == {"kv_cache"}
        assert stats.registry_stats(0).by_tag["kv_cache"] == (count, sum(sizes))
        malloc = watch("malloc")
        assert (malloc.calls, malloc.by_status, malloc.bytes_ok) == (
            count, {"VRAM_SUCCESS": count}, sum(sizes))
        assert __file__ in leaks.where(buffers[0].generation)
        for b, n in zip(buffers, sizes):
            data = rng.bytes(n)
            b.copy_from(data)
            assert b.to_bytes() == data
    finally:
        for b in buffers:
            b.close()


def test_a_batch_takes_the_wipe_policy_per_buffer(wipe_policy, rng):
    wipe_policy(False)
    sizes = [int(n) for n in rng.integers(1, MIB, int(rng.integers(1, 6)))]
    before = stats.op_stats(0)["wipe"]
    for b in vramobs.empty_batch(sizes, wipe=True):
        b.close()
    after = stats.op_stats(0)["wipe"]
    assert (after.calls - before.calls, after.bytes_ok - before.bytes_ok) == (len(sizes), sum(sizes))


def test_a_batch_refuses_bad_input_before_any_allocation(op_watch, rng):
    lib = LIB()
    count = int(rng.integers(2, 10))
    ptrs = (ctypes.c_void_p * count)(*([0xDEAD00] * count))
    generations = (ctypes.c_uint64 * count)(*([77] * count))
    good = [int(n) for n in rng.integers(1, MIB, count)]
    live = stats.registry_stats().live_count
    watch = op_watch(0)
    cases = [
        ("zero_size", good[:-1] + [0], count, 0),
        ("size_overflow", [(1 << 64) - 1] + good[1:], count, 0),
        ("invalid_tag", good, count, 64),
        ("zero_size", good, 0, 0),
    ]
    for reason, sizes, n, tag in cases:
        ptrs[:] = [0xDEAD00] * count
        array = (ctypes.c_size_t * count)(*sizes)
        assert lib.vram_malloc_batch(ptrs, array, n, tag, generations) == 2
        assert last_error_reason() == reason
        if n:
            assert list(ptrs) == [None] * count
            assert list(generations) == [0] * count
    sizes = (ctypes.c_size_t * count)(*good)
    assert lib.vram_malloc_batch(None, sizes, count, 0, None) == 2
    assert lib.vram_malloc_batch(ptrs, None, count, 0, None) == 2
    assert last_error_reason() == "null_pointer"
    assert lib.vram_malloc_batch(ptrs, sizes, (1 << 64) // 8, 0, None) == 2
    assert last_error_reason() == "size_overflow"
    malloc = watch("malloc")
    assert malloc.calls == len(cases) + 3  # each refusal one refused malloc, nothing allocated
    assert malloc.by_status == {"VRAM_ERR_INVALID_PARAMETERS": len(cases) + 3}
    assert stats.registry_stats().live_count == live
    for bad in ([], [1, -1], [1, 1 << 64], "ab", [1, 2.0], [True], None, 5):
        with pytest.raises(vramobs.InvalidArgumentError):
            vramobs.empty_batch(bad)


BATCH_FAILS = r"""
lib = vramobs._native.lib()
sizes = [300_000, 300_000, 600_000, 1000]
ptrs = (ctypes.c_void_p * 4)(*([0xBAD00] * 4))
generations = (ctypes.c_uint64 * 4)()
array = (ctypes.c_size_t * 4)(*sizes)
check("out of memory", lib.vram_malloc_batch(ptrs, array, 4, 0, generations), 1)
error = vramobs._native.ErrorInfo()
lib.vram_last_error(ctypes.byref(error))
check("last error names the failed malloc", (error.status, error.op), (1, 0))
check("every pointer NULL", list(ptrs), [None] * 4)
check("every generation 0", list(generations), [0] * 4)
check("nothing live", stats.registry_stats().live_count, 0)
check("three mallocs", by_status("malloc"), {"VRAM_SUCCESS": 2, "VRAM_ERR_ALLOCATION_FAILED": 1})
check("two frees", by_status("free"), {"VRAM_SUCCESS": 2})
raises("python", vramobs.OutOfMemoryError, vramobs.empty_batch, sizes)
check("still nothing live", stats.registry_stats().live_count, 0)
"""


@pytest.mark.parametrize("pooled", [False, True])
def test_a_batch_failing_in_the_middle_leaves_nothing(child, pooled):
    result = child(
        on_host(
            "vramobs.enable_pool(1 << 30)" if pooled else "",
            BATCH_FAILS,
            r"""
        info = vramobs.get_info()
        s = vramobs.pool_stats(0)
        check("host memory held only by the cache", info.total - info.free, s.cached_bytes)
        finish(cached=s.cached_bytes)
        """,
        ),
        VRAMOBS_HOST_CAPACITY=MIB,
    )
    assert result == {"cached": 655_360 if pooled else 0}  # two 327,680-byte blocks


def test_a_batch_failing_in_the_driver_frees_what_it_made(child):
    result = child(
        r"""
        lib = vramobs._native.lib()
        count = 5
        ptrs = (ctypes.c_void_p * count)()
        array = (ctypes.c_size_t * count)(*[4096 * (i + 1) for i in range(count)])
        before = call_counts()
        check("failed", lib.vram_malloc_batch(ptrs, array, count, 0, None), 1)
        d = delta(call_counts(), before)
        check("driver calls", (d.get("cuMemAlloc"), d.get("cuMemFree")), (3, 2))
        check("every pointer NULL", list(ptrs), [None] * count)
        check("fake empty", live(), 0)
        check("nothing live", stats.registry_stats().live_count, 0)
        finish()
        """,
        FAKECUDA_FAIL="cuMemAlloc:2:3",
    )
    assert result == {}
