"""The fake driver's work on streams (tests/fakecuda/fakecuda.c), driven through ctypes without
libvram_ops: FAKECUDA_ASYNC=deferred queues work per stream until something forces it (stream,
event or context synchronization, a synchronous call ordered with the legacy stream, a stream
wait, fakecuda_run_all), event timing, the stream-ordered allocator, cuStreamGetCtx, and the
immediate mode for comparison. Each test loads its own copy of the library (its own state,
its own environment read at load)."""

import ctypes
import os
import shutil
import threading
from ctypes import (
    POINTER,
    byref,
    c_float,
    c_int,
    c_long,
    c_size_t,
    c_ubyte,
    c_uint,
    c_ulonglong,
    c_void_p,
)

import numpy as np
import pytest

SUCCESS = 0
INVALID_VALUE = 1
OUT_OF_MEMORY = 2
INVALID_CONTEXT = 201
INVALID_HANDLE = 400
NOT_READY = 600
ILLEGAL_ADDRESS = 700
UNKNOWN = 999
STREAM_NON_BLOCKING = 0x1
EVENT_DISABLE_TIMING = 0x2
LEGACY, PER_THREAD = 0x1, 0x2

_SIGNATURES = {
    "cuInit": [c_uint],
    "cuDevicePrimaryCtxRetain": [POINTER(c_void_p), c_int],
    "cuCtxPushCurrent_v2": [c_void_p],
    "cuCtxPopCurrent_v2": [POINTER(c_void_p)],
    "cuCtxSynchronize": [],
    "cuMemAlloc_v2": [POINTER(c_ulonglong), c_size_t],
    "cuMemFree_v2": [c_ulonglong],
    "cuMemAllocAsync": [POINTER(c_ulonglong), c_size_t, c_void_p],
    "cuMemFreeAsync": [c_ulonglong, c_void_p],
    "cuMemGetInfo_v2": [POINTER(c_size_t), POINTER(c_size_t)],
    "cuMemHostAlloc": [POINTER(c_void_p), c_size_t, c_uint],
    "cuMemFreeHost": [c_void_p],
    "cuMemcpyHtoD_v2": [c_ulonglong, c_void_p, c_size_t],
    "cuMemcpyDtoH_v2": [c_void_p, c_ulonglong, c_size_t],
    "cuMemcpyHtoDAsync_v2": [c_ulonglong, c_void_p, c_size_t, c_void_p],
    "cuMemcpyDtoHAsync_v2": [c_void_p, c_ulonglong, c_size_t, c_void_p],
    "cuMemcpyDtoDAsync_v2": [c_ulonglong, c_ulonglong, c_size_t, c_void_p],
    "cuMemcpyPeerAsync": [c_ulonglong, c_void_p, c_ulonglong, c_void_p, c_size_t, c_void_p],
    "cuMemsetD8Async": [c_ulonglong, c_ubyte, c_size_t, c_void_p],
    "cuStreamCreate": [POINTER(c_void_p), c_uint],
    "cuStreamDestroy_v2": [c_void_p],
    "cuStreamSynchronize": [c_void_p],
    "cuStreamWaitEvent": [c_void_p, c_void_p, c_uint],
    "cuStreamGetCtx": [c_void_p, POINTER(c_void_p)],
    "cuEventCreate": [POINTER(c_void_p), c_uint],
    "cuEventRecord": [c_void_p, c_void_p],
    "cuEventSynchronize": [c_void_p],
    "cuEventQuery": [c_void_p],
    "cuEventElapsedTime": [POINTER(c_float), c_void_p, c_void_p],
    "cuEventDestroy_v2": [c_void_p],
}
_CONTROL = {
    "fakecuda_queued": ([], c_long),
    "fakecuda_run_all": ([], None),
    "fakecuda_inject": ([ctypes.c_char_p, c_int, c_long, c_int], None),
    "fakecuda_reset": ([], None),
    "fakecuda_calls": ([ctypes.c_char_p], c_long),
    "fakecuda_live_allocations": ([], c_long),
    "fakecuda_live_streams": ([], c_long),
    "fakecuda_live_events": ([], c_long),
}


class Driver:
    """One fresh copy of the fake driver, initialised, device 0's context current."""

    def __init__(self, lib):
        self.lib = lib
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, c_int
        for name, (args, res) in _CONTROL.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        assert lib.cuInit(0) == SUCCESS
        self.ctx = [self.retain(0)]
        self.push(self.ctx[0])

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def retain(self, device):
        ctx = c_void_p()
        assert self.lib.cuDevicePrimaryCtxRetain(byref(ctx), device) == SUCCESS
        return ctx.value

    def push(self, ctx):
        assert self.lib.cuCtxPushCurrent_v2(ctx) == SUCCESS

    def pop(self):
        assert self.lib.cuCtxPopCurrent_v2(byref(c_void_p())) == SUCCESS

    def alloc(self, n):
        p = c_ulonglong()
        assert self.lib.cuMemAlloc_v2(byref(p), n) == SUCCESS
        return p.value

    def host_alloc(self, n):
        p = c_void_p()
        assert self.lib.cuMemHostAlloc(byref(p), n, 0) == SUCCESS
        return p.value

    def stream(self, flags=STREAM_NON_BLOCKING):
        s = c_void_p()
        assert self.lib.cuStreamCreate(byref(s), flags) == SUCCESS
        return s.value

    def event(self, flags=0):
        e = c_void_p()
        assert self.lib.cuEventCreate(byref(e), flags) == SUCCESS
        return e.value

    def elapsed(self, start, end):
        ms = c_float(-1.0)
        r = self.lib.cuEventElapsedTime(byref(ms), start, end)
        return r, ms.value

    def queued(self):
        return self.lib.fakecuda_queued()


@pytest.fixture
def load(fake_driver, tmp_path, monkeypatch):
    """load(mode="deferred", devices=1): a Driver over a private copy of libfakecuda.so."""
    copies = []

    def _load(mode="deferred", devices=1):
        path = tmp_path / f"libfakecuda-{len(copies)}.so"
        shutil.copy(fake_driver, path)
        for name in [k for k in os.environ if k.startswith("FAKECUDA_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("FAKECUDA_ASYNC", mode)
        monkeypatch.setenv("FAKECUDA_DEVICES", str(devices))
        copies.append(Driver(ctypes.CDLL(str(path))))
        return copies[-1]

    return _load


def peek(address, n):
    """Device (or pinned host) memory as the fake holds it: the device pointer is a host
    address there. Reading it forces no queued work."""
    return np.frombuffer(ctypes.string_at(address, n), dtype=np.uint8).copy()


def poke(address, data):
    ctypes.memmove(address, data.ctypes.data, data.nbytes)


def fresh(rng, n, unlike=None):
    """Random bytes, different from `unlike` in every position (so a stale byte shows)."""
    data = rng.integers(0, 256, n, dtype=np.uint8)
    if unlike is not None:
        data = np.where(data == unlike, data ^ 0xFF, data).astype(np.uint8)
    return data


def test_copies_on_a_stream_wait_for_its_synchronization(load, rng):
    d = load()
    n = int(rng.integers(1, 64 << 10))
    dev = d.alloc(n)
    src, dst = d.host_alloc(n), d.host_alloc(n)
    old = fresh(rng, n)
    poke(dev, old)
    first = fresh(rng, n, unlike=old)
    poke(src, first)
    poke(dst, np.zeros(n, np.uint8))
    s = d.stream()
    e = d.event()
    assert d.cuMemcpyHtoDAsync_v2(dev, src, n, s) == SUCCESS
    assert d.cuMemcpyDtoHAsync_v2(dst, dev, n, s) == SUCCESS
    assert d.cuEventRecord(e, s) == SUCCESS
    assert d.queued() == 3
    assert d.cuEventQuery(e) == NOT_READY
    assert d.cuEventQuery(e) == NOT_READY  # a query runs nothing
    assert np.array_equal(peek(dev, n), old)
    assert not peek(dst, n).any()
    # Page-locked memory is read when the copy runs, not when it was enqueued.
    later = fresh(rng, n, unlike=first)
    poke(src, later)
    assert d.cuStreamSynchronize(s) == SUCCESS
    assert d.queued() == 0
    assert d.cuEventQuery(e) == SUCCESS
    assert np.array_equal(peek(dev, n), later)
    assert np.array_equal(peek(dst, n), later)


def test_event_synchronize_runs_the_stream_up_to_the_record(load, rng):
    d = load()
    n = int(rng.integers(2, 4096))
    dev = d.alloc(2 * n)
    poke(dev, np.zeros(2 * n, np.uint8))
    host = d.host_alloc(2 * n)
    data = fresh(rng, 2 * n, unlike=0)
    poke(host, data)
    s = d.stream()
    e1, e2 = d.event(), d.event()
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, s) == SUCCESS
    assert d.cuEventRecord(e1, s) == SUCCESS
    assert d.cuMemcpyHtoDAsync_v2(dev + n, host + n, n, s) == SUCCESS
    assert d.cuEventRecord(e2, s) == SUCCESS
    assert d.cuEventSynchronize(e1) == SUCCESS
    assert d.queued() == 2
    assert (d.cuEventQuery(e1), d.cuEventQuery(e2)) == (SUCCESS, NOT_READY)
    assert np.array_equal(peek(dev, 2 * n), np.concatenate([data[:n], np.zeros(n, np.uint8)]))
    assert d.cuEventSynchronize(e2) == SUCCESS
    assert d.queued() == 0
    assert np.array_equal(peek(dev, 2 * n), data)


def test_a_stream_runs_its_work_in_order(load, rng):
    """A random mix of copies and memsets over overlapping ranges ends as done one by one."""
    d = load()
    n = 1024
    a, b = d.alloc(n), d.alloc(n)
    model = {a: fresh(rng, n), b: fresh(rng, n)}
    poke(a, model[a])
    poke(b, model[b])
    hosts = []
    s = d.stream()
    for _ in range(int(rng.integers(20, 60))):
        dst = a if rng.integers(2) else b
        off = int(rng.integers(0, n))
        length = int(rng.integers(1, n - off + 1))
        kind = int(rng.integers(3))
        if kind == 0:
            data = fresh(rng, length)
            host = d.host_alloc(length)
            hosts.append(host)
            poke(host, data)
            assert d.cuMemcpyHtoDAsync_v2(dst + off, host, length, s) == SUCCESS
            model[dst][off:off + length] = data
        elif kind == 1:
            value = int(rng.integers(256))
            assert d.cuMemsetD8Async(dst + off, value, length, s) == SUCCESS
            model[dst][off:off + length] = value
        else:
            src = b if dst == a else a
            src_off = int(rng.integers(0, n - length + 1))
            assert d.cuMemcpyDtoDAsync_v2(dst + off, src + src_off, length, s) == SUCCESS
            model[dst][off:off + length] = model[src][src_off:src_off + length]
    assert d.queued() > 0
    assert d.cuStreamSynchronize(s) == SUCCESS
    assert np.array_equal(peek(a, n), model[a]) and np.array_equal(peek(b, n), model[b])
    for host in hosts:
        assert d.cuMemFreeHost(host) == SUCCESS


def test_the_legacy_stream_and_blocking_streams_are_ordered_with_each_other(load, rng):
    d = load()
    n = 512
    a, b = d.alloc(n), d.alloc(n)
    blocking = d.stream(flags=0)
    v = [int(x) for x in rng.choice(256, size=4, replace=False)]
    assert d.cuMemsetD8Async(a, v[0], n, blocking) == SUCCESS
    assert d.cuMemsetD8Async(a, v[1], n, None) == SUCCESS  # the legacy stream
    assert d.cuMemsetD8Async(b, v[2], n, LEGACY) == SUCCESS
    assert d.cuMemsetD8Async(b, v[3], n, blocking) == SUCCESS
    # Synchronizing either runs both streams' work in the order it was enqueued across them.
    assert d.cuStreamSynchronize(blocking if rng.integers(2) else PER_THREAD) == SUCCESS
    assert d.queued() == 0
    assert (peek(a, n) == v[1]).all() and (peek(b, n) == v[3]).all()


def test_synchronous_calls_wait_for_blocking_streams_not_for_non_blocking_ones(load, rng):
    d = load()
    n = int(rng.integers(1, 8192))
    dev = d.alloc(n)
    old = fresh(rng, n)
    poke(dev, old)
    quiet, blocking = d.stream(), d.stream(flags=0)
    value = int(rng.integers(256))
    assert d.cuMemsetD8Async(dev, value, n, quiet) == SUCCESS
    out = np.empty(n, np.uint8)
    assert d.cuMemcpyDtoH_v2(out.ctypes.data, dev, n) == SUCCESS
    assert np.array_equal(out, old) and d.queued() == 1  # a non-blocking stream: not waited for
    assert d.cuStreamSynchronize(quiet) == SUCCESS
    new = fresh(rng, n, unlike=value)
    host = d.host_alloc(n)
    poke(host, new)
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, blocking) == SUCCESS
    assert d.cuMemcpyDtoH_v2(out.ctypes.data, dev, n) == SUCCESS
    assert np.array_equal(out, new) and d.queued() == 0


def test_pageable_host_memory_is_handled_when_called(load, rng):
    """As the real driver: a pageable source is taken at the call; a pageable destination is
    written before the call returns, after the stream's earlier work."""
    d = load()
    n = int(rng.integers(1, 16384))
    dev = d.alloc(n)
    s = d.stream()
    data = fresh(rng, n)
    source = data.copy()
    assert d.cuMemcpyHtoDAsync_v2(dev, source.ctypes.data, n, s) == SUCCESS
    source[:] = fresh(rng, n, unlike=data)  # reused at once: the copy took the old bytes
    assert d.queued() == 1
    out = np.zeros(n, np.uint8)
    assert d.cuMemcpyDtoHAsync_v2(out.ctypes.data, dev, n, s) == SUCCESS
    assert d.queued() == 0
    assert np.array_equal(out, data)


def test_stream_wait_event_makes_the_waited_for_work_run(load, rng):
    d = load()
    n = int(rng.integers(1, 4096))
    dev = d.alloc(2 * n)
    poke(dev, np.zeros(2 * n, np.uint8))
    producer, consumer = d.stream(), d.stream()
    e = d.event()
    v1, v2 = (int(v) for v in rng.choice(np.arange(1, 256), size=2, replace=False))
    assert d.cuMemsetD8Async(dev, v1, n, producer) == SUCCESS
    assert d.cuEventRecord(e, producer) == SUCCESS
    assert d.cuMemsetD8Async(dev + n, v2, n, producer) == SUCCESS
    assert d.cuStreamWaitEvent(consumer, e, 0) == SUCCESS
    assert d.cuEventQuery(e) == SUCCESS
    assert d.queued() == 1  # the work after the record still waits
    got = peek(dev, 2 * n)
    assert (got[:n] == v1).all() and not got[n:].any()
    assert d.cuMemcpyDtoDAsync_v2(dev + n, dev, n, consumer) == SUCCESS
    assert d.cuStreamSynchronize(consumer) == SUCCESS
    assert (peek(dev, 2 * n) == v1).all() and d.queued() == 1
    assert d.cuStreamWaitEvent(consumer, e, 1 << 5) == INVALID_VALUE
    assert d.cuStreamWaitEvent(consumer, 0x7E57, 0) == INVALID_HANDLE


def test_context_synchronize_run_all_and_stream_destroy_run_what_is_queued(load, rng):
    d = load()
    n = 256
    devs = [d.alloc(n) for _ in range(3)]
    streams = [d.stream(), d.stream(flags=0), d.stream()]
    values = [int(v) for v in rng.integers(0, 256, 3)]
    for dev, s, v in zip(devs, streams, values):
        assert d.cuMemsetD8Async(dev, v, n, s) == SUCCESS
    assert d.queued() == 3
    assert d.cuCtxSynchronize() == SUCCESS
    assert d.queued() == 0
    assert all((peek(dev, n) == v).all() for dev, v in zip(devs, values))

    values = [v ^ 0x5A for v in values]
    for dev, s, v in zip(devs, streams, values):
        assert d.cuMemsetD8Async(dev, v, n, s) == SUCCESS
    d.fakecuda_run_all()
    assert d.queued() == 0
    assert all((peek(dev, n) == v).all() for dev, v in zip(devs, values))

    live = d.fakecuda_live_streams()
    assert d.cuMemsetD8Async(devs[0], values[0] ^ 0xFF, n, streams[0]) == SUCCESS
    assert d.cuStreamDestroy_v2(streams[0]) == SUCCESS
    assert d.queued() == 0 and d.fakecuda_live_streams() == live - 1
    assert (peek(devs[0], n) == values[0] ^ 0xFF).all()


def test_event_timing(load, rng):
    d = load()
    n = 4 << 20
    dev, host = d.alloc(n), d.host_alloc(n)
    poke(host, fresh(rng, n))
    s = d.stream()
    e = [d.event() for _ in range(3)]
    assert d.cuEventRecord(e[0], s) == SUCCESS
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, s) == SUCCESS
    assert d.cuEventRecord(e[1], s) == SUCCESS
    assert d.cuMemcpyDtoHAsync_v2(host, dev, n, s) == SUCCESS
    assert d.cuEventRecord(e[2], s) == SUCCESS
    assert d.elapsed(e[0], e[2])[0] == NOT_READY
    assert d.cuEventSynchronize(e[0]) == SUCCESS
    assert d.elapsed(e[0], e[1])[0] == NOT_READY
    assert d.cuStreamSynchronize(s) == SUCCESS
    r01, t01 = d.elapsed(e[0], e[1])
    r02, t02 = d.elapsed(e[0], e[2])
    r12, t12 = d.elapsed(e[1], e[2])
    assert (r01, r02, r12) == (SUCCESS, SUCCESS, SUCCESS)
    assert 0 <= t01 <= t02 and 0 <= t12 <= t02
    assert t02 > 0  # two 4 MiB copies take some time
    assert t02 == pytest.approx(t01 + t12, abs=1e-3)

    never = d.event()
    untimed = d.event(EVENT_DISABLE_TIMING)
    assert d.cuEventRecord(untimed, s) == SUCCESS
    assert d.cuStreamSynchronize(s) == SUCCESS
    assert d.elapsed(e[0], never)[0] == INVALID_HANDLE
    assert d.elapsed(never, e[0])[0] == INVALID_HANDLE
    assert d.elapsed(e[0], untimed)[0] == INVALID_HANDLE
    assert d.elapsed(e[0], 0x7E57)[0] == INVALID_HANDLE
    assert d.cuEventElapsedTime(None, e[0], e[1]) == INVALID_VALUE


def test_event_timing_in_immediate_mode(load, rng):
    d = load("immediate")
    n = 1 << 20
    dev, host = d.alloc(n), d.host_alloc(n)
    data = fresh(rng, n)
    poke(host, data)
    s = d.stream()
    start, end = d.event(), d.event()
    assert d.cuEventRecord(start, s) == SUCCESS
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, s) == SUCCESS
    assert d.cuEventRecord(end, s) == SUCCESS
    assert d.queued() == 0 and d.cuEventQuery(end) == SUCCESS  # done at the call
    assert np.array_equal(peek(dev, n), data)
    r, ms = d.elapsed(start, end)
    assert r == SUCCESS and ms >= 0
    assert d.elapsed(end, d.event())[0] == INVALID_HANDLE


def test_record_again_and_destroy_with_a_record_queued(load):
    d = load()
    s1, s2 = d.stream(), d.stream()
    e = d.event()
    # Never recorded: complete, as the real driver answers.
    assert d.cuEventQuery(e) == SUCCESS and d.cuEventSynchronize(e) == SUCCESS
    assert d.cuEventRecord(e, s1) == SUCCESS
    assert d.cuEventRecord(e, s2) == SUCCESS  # the latest record decides
    assert d.cuStreamSynchronize(s1) == SUCCESS
    assert d.cuEventQuery(e) == NOT_READY
    assert d.cuEventSynchronize(e) == SUCCESS
    assert d.cuEventQuery(e) == SUCCESS and d.queued() == 0
    assert d.cuEventRecord(e, s1) == SUCCESS
    live = d.fakecuda_live_events()
    assert d.cuEventDestroy_v2(e) == SUCCESS
    assert d.fakecuda_live_events() == live - 1
    # The record left in s1 completes nothing, not even an event made later (at the same
    # address, as often as not).
    later = d.event()
    assert d.cuEventRecord(later, s2) == SUCCESS
    assert d.queued() == 2
    assert d.cuStreamSynchronize(s1) == SUCCESS and d.queued() == 1
    assert d.cuEventQuery(later) == NOT_READY
    assert d.cuEventSynchronize(later) == SUCCESS and d.queued() == 0


def test_enqueue_checks_fail_the_call_and_queue_nothing(load):
    d = load()
    n = 4096
    dev, host = d.alloc(n), d.host_alloc(n)
    s = d.stream()
    assert d.cuMemcpyHtoDAsync_v2(dev + 1, host, n, s) == INVALID_VALUE
    assert d.cuMemcpyDtoHAsync_v2(host, dev, n + 1, s) == INVALID_VALUE
    assert d.cuMemcpyHtoDAsync_v2(dev, None, n, s) == INVALID_VALUE
    assert d.cuMemcpyDtoDAsync_v2(dev, 0, n, s) == INVALID_VALUE
    assert d.cuMemsetD8Async(dev, 1, n + 1, s) == INVALID_VALUE
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, 0x7E57) == INVALID_HANDLE
    assert d.cuMemsetD8Async(dev, 1, 0, s) == SUCCESS  # nothing to do
    d.pop()
    assert d.cuMemsetD8Async(dev, 1, n, s) == INVALID_CONTEXT
    assert d.cuEventRecord(0x7E57, s) == INVALID_HANDLE
    d.push(d.ctx[0])
    assert d.queued() == 0


def test_stream_ordered_allocation(load, rng):
    d = load()
    total, free0 = c_size_t(), c_size_t()
    assert d.cuMemGetInfo_v2(byref(free0), byref(total)) == SUCCESS
    s = d.stream()
    n = int(rng.integers(1, 1 << 20))
    p = c_ulonglong()
    assert d.cuMemAllocAsync(byref(p), n, s) == SUCCESS
    q = d.alloc(n)  # freed by cuMemFreeAsync too
    assert d.fakecuda_live_allocations() == 2
    rounded = (n + 511) // 512 * 512
    free1 = c_size_t()
    assert d.cuMemGetInfo_v2(byref(free1), byref(total)) == SUCCESS
    assert free0.value - free1.value == 2 * rounded
    assert d.cuMemsetD8Async(p.value, 7, n, s) == SUCCESS
    assert d.cuMemFreeAsync(p.value, s) == SUCCESS
    assert d.cuMemFreeAsync(q, s) == SUCCESS
    # Queued: still accounted; no further work on them, no second free.
    assert d.fakecuda_live_allocations() == 2 and d.queued() == 3
    assert d.cuMemsetD8Async(p.value, 1, n, s) == INVALID_VALUE
    assert d.cuMemFreeAsync(q, s) == INVALID_VALUE
    host = np.zeros(n, np.uint8)
    assert d.cuMemcpyHtoD_v2(q, host.ctypes.data, n) == INVALID_VALUE
    assert d.cuStreamSynchronize(s) == SUCCESS
    assert d.fakecuda_live_allocations() == 0
    assert d.cuMemGetInfo_v2(byref(free1), byref(total)) == SUCCESS
    assert free1.value == free0.value
    assert d.cuMemFreeAsync(q, s) == INVALID_VALUE
    assert d.cuMemAllocAsync(byref(p), 0, s) == INVALID_VALUE
    assert d.cuMemAllocAsync(None, n, s) == INVALID_VALUE
    assert d.cuMemAllocAsync(byref(p), n, 0x7E57) == INVALID_HANDLE
    assert d.cuMemAllocAsync(byref(p), total.value, s) == OUT_OF_MEMORY


def test_memory_released_before_queued_work_ran_is_an_illegal_address(load, rng, capfd):
    d = load()
    n = 1024
    dev, host = d.alloc(n), d.host_alloc(n)
    user, freer = d.stream(), d.stream()
    assert d.cuMemcpyDtoHAsync_v2(host, dev, n, user) == SUCCESS
    assert d.cuMemFreeAsync(dev, freer) == SUCCESS  # a race: not ordered after the copy
    assert d.cuStreamSynchronize(freer) == SUCCESS
    assert d.cuStreamSynchronize(user) == ILLEGAL_ADDRESS
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in capfd.readouterr().err
    assert d.cuCtxSynchronize() == ILLEGAL_ADDRESS  # sticky
    d.fakecuda_reset()
    assert d.cuCtxSynchronize() == SUCCESS


def test_injected_faults_fire_at_enqueue(load):
    d = load()
    n = 512
    dev, host = d.alloc(n), d.host_alloc(n)
    s = d.stream()
    d.fakecuda_inject(b"cuMemcpyHtoDAsync", OUT_OF_MEMORY, 1, 0)
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, s) == OUT_OF_MEMORY
    assert d.queued() == 0
    assert d.cuMemcpyHtoDAsync_v2(dev, host, n, s) == SUCCESS
    assert d.queued() == 1
    p = c_ulonglong(0xDEAD)
    for name, call in (
        (b"cuMemAllocAsync", lambda: d.cuMemAllocAsync(byref(p), n, s)),
        (b"cuMemFreeAsync", lambda: d.cuMemFreeAsync(dev, s)),
        (b"cuMemcpyPeerAsync", lambda: d.cuMemcpyPeerAsync(dev, d.ctx[0], dev, d.ctx[0], n, s)),
    ):
        before = d.fakecuda_calls(name)
        d.fakecuda_inject(b"*", UNKNOWN, 1, 0)
        assert call() == UNKNOWN, name
        assert d.fakecuda_calls(name) == before + 1
    assert p.value == 0xDEAD and d.fakecuda_live_allocations() == 1 and d.queued() == 1
    d.fakecuda_inject(b"cuMemAllocAsync", SUCCESS, 1, 0)  # "success" without memory
    assert d.cuMemAllocAsync(byref(p), n, s) == SUCCESS and p.value == 0
    d.fakecuda_inject(b"cuEventRecord", ILLEGAL_ADDRESS, 1, 1)
    assert d.cuEventRecord(d.event(), s) == ILLEGAL_ADDRESS
    assert d.cuStreamSynchronize(s) == ILLEGAL_ADDRESS  # sticky: nothing runs
    assert d.queued() == 1
    d.fakecuda_reset()
    assert d.cuStreamSynchronize(s) == SUCCESS and d.queued() == 0


def test_peer_copies_on_a_stream(load, rng):
    d = load(devices=2)
    d.ctx.append(d.retain(1))
    n = int(rng.integers(1, 8192))
    a = d.alloc(n)
    d.push(d.ctx[1])
    b = d.alloc(n)
    d.pop()
    data = fresh(rng, n)
    poke(a, data)
    poke(b, np.zeros(n, np.uint8))
    s = d.stream()
    assert d.cuMemcpyPeerAsync(b, d.ctx[0], a, d.ctx[0], n, s) == INVALID_VALUE  # b: device 1
    assert d.cuMemcpyPeerAsync(b, 0x7E57, a, d.ctx[0], n, s) == INVALID_CONTEXT
    assert d.cuMemcpyPeerAsync(b, d.ctx[1], a, d.ctx[0], n, s) == SUCCESS
    assert not peek(b, n).any()
    assert d.cuStreamSynchronize(s) == SUCCESS
    assert np.array_equal(peek(b, n), data)
    # An explicit stream needs no current context.
    d.pop()
    assert d.cuMemcpyPeerAsync(a, d.ctx[0], b, d.ctx[1], n, s) == SUCCESS
    assert d.cuMemcpyPeerAsync(a, d.ctx[0], b, d.ctx[1], n, None) == INVALID_CONTEXT
    d.push(d.ctx[0])
    assert d.cuStreamSynchronize(s) == SUCCESS


def test_stream_get_ctx(load):
    d = load(devices=2)
    d.ctx.append(d.retain(1))
    ctx = c_void_p()
    for handle in (None, LEGACY, PER_THREAD):
        ctx.value = None
        assert d.cuStreamGetCtx(handle, byref(ctx)) == SUCCESS and ctx.value == d.ctx[0]
    d.push(d.ctx[1])
    s1 = d.stream()
    d.pop()
    assert d.cuStreamGetCtx(s1, byref(ctx)) == SUCCESS and ctx.value == d.ctx[1]
    assert d.cuStreamGetCtx(s1, None) == INVALID_VALUE
    assert d.cuStreamGetCtx(0x7E57, byref(ctx)) == INVALID_HANDLE
    d.pop()
    assert d.cuStreamGetCtx(None, byref(ctx)) == INVALID_CONTEXT
    assert d.cuStreamGetCtx(s1, byref(ctx)) == SUCCESS and ctx.value == d.ctx[1]
    d.push(d.ctx[0])
    assert d.cuStreamDestroy_v2(s1) == SUCCESS
    assert d.cuStreamGetCtx(s1, byref(ctx)) == INVALID_HANDLE


def test_threads_with_their_own_streams(load, rng):
    d = load()
    threads, rounds, n = 8, 40, 2048
    seeds = rng.integers(0, 2**63, threads)
    failures = []

    def work(seed):
        local = np.random.default_rng(int(seed))
        try:
            d.push(d.ctx[0])
            dev, host = d.alloc(n), d.host_alloc(n)
            s, e = d.stream(), d.event()
            for _ in range(rounds):
                data = fresh(local, n)
                poke(host, data)
                assert d.cuMemcpyHtoDAsync_v2(dev, host, n, s) == SUCCESS
                assert d.cuMemsetD8Async(host, 0, n, s) == INVALID_VALUE  # host, not device
                assert d.cuMemcpyDtoHAsync_v2(host, dev, n, s) == SUCCESS
                assert d.cuEventRecord(e, s) == SUCCESS
                if local.integers(2):
                    assert d.cuEventSynchronize(e) == SUCCESS
                else:
                    assert d.cuStreamSynchronize(s) == SUCCESS
                assert np.array_equal(peek(host, n), data)
            assert d.cuStreamDestroy_v2(s) == SUCCESS and d.cuEventDestroy_v2(e) == SUCCESS
            assert d.cuMemFree_v2(dev) == SUCCESS and d.cuMemFreeHost(host) == SUCCESS
        except AssertionError as exc:
            failures.append(exc)

    pool = [threading.Thread(target=work, args=(seed,)) for seed in seeds]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures
    assert d.queued() == 0 and d.fakecuda_live_allocations() == 0
