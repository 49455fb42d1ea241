"""Pinned host memory on the host backend: allocation from size classes, the cache of freed
blocks (cleared before reuse), registration and its overlaps, refusals with their codes and
reasons, counting as host_alloc/host_free, copies with device buffers, and concurrency."""

import ctypes
import gc
import mmap
import threading
import warnings

import numpy as np
import pytest

import vramobs
from vramobs import _native, pinned
from vramobs.errors import InvalidArgumentError

PAGE = 4096


def class_size(n):
    """The documented classes: a page up to 4 KiB, then quarters of the power of two below
    (at least a page)."""
    if n <= PAGE:
        return PAGE
    base = 1 << ((n - 1).bit_length() - 1)
    step = max(base // 4, PAGE)
    return -(-n // step) * step


@pytest.fixture(autouse=True)
def empty_cache():
    """Every test starts and ends with no pinned block in use and none cached."""
    pinned.trim_pinned(0)
    start = pinned.host_stats()
    assert (start.live_count, start.cached_bytes, start.registered_count) == (0, 0, 0)
    yield
    gc.collect()
    end = pinned.host_stats()
    pinned.trim_pinned(0)
    assert (end.live_count, end.registered_count) == (0, 0), "test left pinned memory behind"


def last_reason():
    info = _native.ErrorInfo()
    _native.lib().vram_last_error(ctypes.byref(info))
    return _native.lib().vram_reason_name(info.reason).decode()


def test_sizes_round_to_their_class_and_are_counted(rng, op_watch):
    watch = op_watch()
    sizes = [1, PAGE, PAGE + 1, 10_000, 65_537, 100_000, int(rng.integers(1, 1 << 22))]
    buffers = [pinned.pinned_empty(n) for n in sizes]
    stats = pinned.host_stats()
    assert stats.live_count == len(sizes)
    assert stats.live_bytes == sum(class_size(n) for n in sizes)
    assert [class_size(n) for n in (PAGE + 1, 10_000, 65_537, 100_000)] == [8192, 12288, 81920, 114688]
    for buf in buffers:
        buf.close()
    stats = pinned.host_stats()
    assert (stats.live_count, stats.live_bytes) == (0, 0)
    assert stats.cached_bytes == sum(class_size(n) for n in sizes)
    alloc, free = watch("host_alloc"), watch("host_free")
    assert (alloc.calls, alloc.bytes_ok, alloc.latency_ok) == (len(sizes), sum(sizes), len(sizes))
    assert (free.calls, free.bytes_ok) == (len(sizes), sum(sizes))


def test_a_freed_block_is_reused_cleared(rng):
    n = int(rng.integers(PAGE + 1, 1 << 20))
    first = pinned.pinned_empty(n)
    address = first.ptr
    view = first.numpy()
    view[:] = rng.integers(1, 256, n, dtype=np.uint8)
    del view
    first.close()
    # Another size of the same class gets the same block, all zeros.
    again = pinned.pinned_empty(class_size(n) - int(rng.integers(0, 100)))
    assert again.ptr == address
    assert not again.numpy().any()
    assert pinned.host_stats().cached_bytes == 0
    again.close()


def test_trim_returns_cached_blocks():
    for n in (PAGE, 3 * PAGE, 1 << 20):
        pinned.pinned_empty(n).close()
    total = PAGE + 3 * PAGE + (1 << 20)
    assert pinned.host_stats().cached_bytes == total
    pinned.trim_pinned(5 * PAGE)  # the largest go first
    assert pinned.host_stats().cached_bytes == PAGE + 3 * PAGE
    pinned.trim_pinned(0)
    assert pinned.host_stats().cached_bytes == 0
    with pytest.raises(InvalidArgumentError):
        pinned.trim_pinned(-1)


def test_alloc_and_free_refusals(op_watch):
    lib = _native.lib()
    watch = op_watch()
    ptr = ctypes.c_void_p(1234)
    assert lib.vram_host_alloc(None, 10) == 2 and last_reason() == "null_pointer"
    assert lib.vram_host_alloc(ctypes.byref(ptr), 0) == 2 and last_reason() == "zero_size"
    assert ptr.value is None  # cleared on failure
    assert lib.vram_host_alloc(ctypes.byref(ptr), (1 << 63) + 1) == 2
    assert last_reason() == "size_overflow"
    with pytest.raises(InvalidArgumentError):
        pinned.pinned_empty(0)
    buf = pinned.pinned_empty(3 * PAGE)
    assert lib.vram_host_free(None) == 0
    assert lib.vram_host_free(buf.ptr + 1) == 7 and last_reason() == "interior_pointer"
    host = ctypes.create_string_buffer(64)
    assert lib.vram_host_free(ctypes.addressof(host)) == 5 and last_reason() == "unknown_pointer"
    address = buf.ptr
    buf.close()
    buf.close()  # idempotent in Python
    assert lib.vram_host_free(address) == 5  # already freed: never cached twice
    refused = watch("host_alloc").refused
    assert refused == {"null_pointer": 1, "zero_size": 1, "size_overflow": 1}
    assert watch("host_free").refused == {"interior_pointer": 1, "unknown_pointer": 2}


def test_copies_between_device_and_pinned_buffers(rng):
    n = int(rng.integers(1, 1 << 20))
    src, dst = pinned.pinned_empty(n), pinned.pinned_empty(n + 5)
    data = rng.integers(0, 256, n, dtype=np.uint8)
    src.numpy()[:] = data
    with vramobs.alloc(n + 9) as dev:
        dev.copy_from(src.view, offset=9)
        dev.copy_to(dst.view[5:], offset=9)
    assert np.array_equal(dst.numpy()[5:], data)
    src.close()
    dst.close()
    with pytest.raises(ValueError):
        src.view  # noqa: B018 - closed


def test_numpy_views_of_any_dtype(rng):
    with pinned.pinned_empty(4 * 1000) as buf:
        words = buf.numpy("<u4")
        words[:] = rng.integers(0, 2**32, 1000, dtype=np.uint32)
        assert words.shape == (1000,)
        assert bytes(buf.view) == words.tobytes()
        del words


def test_views_keep_a_buffer_open_and_collection_frees_it():
    buf = pinned.pinned_empty(PAGE)
    view = buf.view
    with pytest.raises(BufferError):
        buf.close()
    view.release()
    buf.close()
    leaked = pinned.pinned_empty(PAGE)
    array = leaked.numpy()
    del leaked  # the numpy view still uses the memory: nothing freed yet
    assert pinned.host_stats().live_count == 1
    array[:] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del array
        gc.collect()
    assert pinned.host_stats().live_count == 0
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


def test_register_overlaps_and_refusals(rng):
    lib = _native.lib()
    region = mmap.mmap(-1, 8 * PAGE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    data = np.frombuffer(region, dtype=np.uint8)
    with pinned.register_host(data[PAGE : 3 * PAGE]) as reg:
        stats = pinned.host_stats()
        assert (stats.registered_count, stats.registered_bytes, reg.nbytes) == (1, 2 * PAGE, 2 * PAGE)
        # Any overlap, at either end or inside, is refused; touching ranges are fine.
        for start, length in ((0, PAGE + 1), (3 * PAGE - 1, 10), (2 * PAGE, 1), (0, 8 * PAGE)):
            assert lib.vram_host_register(address + start, length) == 2
            assert last_reason() == "overlap"
        with pinned.register_host(data[3 * PAGE : 4 * PAGE]), pinned.register_host(data[:PAGE]):
            assert pinned.host_stats().registered_count == 3
        assert lib.vram_host_unregister(address + PAGE + 1) == 7
        assert lib.vram_host_unregister(address + 5 * PAGE) == 5
        assert lib.vram_host_unregister(None) == 2
    assert pinned.host_stats().registered_count == 0
    assert lib.vram_host_unregister(address + PAGE) == 5  # once only
    assert lib.vram_host_register(None, 10) == 2 and last_reason() == "null_pointer"
    assert lib.vram_host_register(address, 0) == 2 and last_reason() == "zero_size"
    assert lib.vram_host_register(ctypes.c_void_p(2**64 - 10), 100) == 2
    assert last_reason() == "range_wrap"
    # A pinned block cannot be registered over, nor freed as if it were registered.
    block = pinned.pinned_empty(2 * PAGE)
    assert lib.vram_host_register(block.ptr + 10, 10) == 2 and last_reason() == "overlap"
    assert lib.vram_host_unregister(block.ptr) == 5
    block.close()
    with pytest.raises(InvalidArgumentError):
        pinned.register_host(b"")
    del data
    region.close()


def test_a_registered_buffer_cannot_be_resized():
    data = bytearray(3 * PAGE)
    reg = pinned.register_host(data)
    with pytest.raises(BufferError):
        data.extend(b"x")
    reg.close()
    reg.close()
    data.extend(b"x")


def test_concurrent_alloc_free_and_register(rng):
    failures = []
    seeds = rng.integers(0, 2**32, 8)

    def worker(seed):
        local = np.random.default_rng(seed)
        try:
            for _ in range(40):
                n = int(local.integers(1, 200_000))
                with pinned.pinned_empty(n) as buf:
                    if buf.numpy().any():
                        failures.append("a reused block was not cleared")
                    data = local.integers(1, 256, n, dtype=np.uint8)
                    buf.numpy()[:] = data
                    own = np.empty(n, np.uint8)
                    with pinned.register_host(own):
                        own[:] = buf.numpy()
                    if not np.array_equal(own, data):
                        failures.append("bytes changed under another thread")
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(int(s),)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    stats = pinned.host_stats()
    assert (stats.live_count, stats.live_bytes, stats.registered_count) == (0, 0, 0)


def test_staging_configuration_round_trips_and_is_validated():
    before = pinned.staging_config()
    try:
        cfg = pinned.configure_staging(threads=3, chunk_bytes=1 << 16, min_bytes=7, buffers=4)
        assert cfg == pinned.StagingConfig(3, 1 << 16, 7, 4) == pinned.staging_config()
        assert pinned.configure_staging(min_bytes=9).min_bytes == 9  # the others stay
        assert pinned.staging_config().threads == 3
        for bad in ({"threads": 65}, {"chunk_bytes": 100}, {"buffers": 0}, {"threads": True}):
            with pytest.raises(InvalidArgumentError) as info:
                pinned.configure_staging(**bad)
            assert info.value.reason == "invalid_config"
        assert _native.lib().vram_staging_get(None) == 2
    finally:
        pinned.configure_staging(
            threads=before.threads,
            chunk_bytes=before.chunk_bytes,
            min_bytes=before.min_bytes,
            buffers=before.buffers,
        )


def test_host_backend_copies_are_never_staged(rng):
    n = 2 << 20
    before = pinned.host_stats()
    data = rng.integers(0, 256, n, dtype=np.uint8)
    with vramobs.to_device(data) as dev:
        assert np.array_equal(np.frombuffer(dev.to_bytes(), np.uint8), data)
    after = pinned.host_stats()
    assert (after.staged_copies_total, after.staging_bytes) == (before.staged_copies_total, 0)


def test_numa_node_is_unknown_on_the_host_backend():
    assert pinned.host_numa_node(0) == -1
    with pytest.raises(InvalidArgumentError):
        pinned.host_numa_node(1)
    with pytest.raises(InvalidArgumentError):
        pinned.host_numa_node(-1)
