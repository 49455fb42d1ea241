"""Copies and allocation on CUDA streams (vramobs.streams): stream handles from every library,
the host backend in this process (no streams: done at the call), and the CUDA backend over
the fake driver in its deferred mode, where work on a stream runs only when something waits
for it, so that completion, draining by a free and counting at completion are observable."""

import ctypes

import pytest

import vramobs
from vramobs import _native, stats
from vramobs.errors import InvalidArgumentError, OutOfBoundsError


# ---- stream handles -------------------------------------------------------------------------


class _Protocol:
    def __init__(self, handle):
        self.handle = handle

    def __cuda_stream__(self):
        return (0, self.handle)


class _TorchLike:
    def __init__(self, handle):
        self.cuda_stream = handle


class _CupyLike:
    def __init__(self, handle):
        self.ptr = handle


class _CudaPythonLike:
    def __init__(self, handle):
        self._handle = handle

    def getPtr(self):
        return self._handle


class _IntLike:
    def __init__(self, handle):
        self._handle = handle

    def __int__(self):
        return self._handle


@pytest.mark.parametrize("kind", [int, _Protocol, _TorchLike, _CupyLike, _CudaPythonLike, _IntLike])
def test_stream_handles_from_every_library(kind, rng):
    handle = int(rng.integers(3, 1 << 62))
    assert vramobs.stream_handle(kind(handle)) == handle


@pytest.mark.parametrize("bad", [True, -1, 1 << 64, "0", 1.5, object(), _TorchLike(-5)])
def test_what_is_not_a_stream_is_refused(bad):
    with pytest.raises(InvalidArgumentError) as info:
        vramobs.stream_handle(bad)
    assert info.value.reason == "invalid_stream"


def test_none_is_the_legacy_default_stream():
    assert vramobs.stream_handle(None) == 0


# ---- host backend: done at the call, counted like the synchronous copies --------------------


def test_async_round_trip_at_odd_offsets(rng):
    data = rng.integers(1, 256, 100_003, dtype="u1")
    before, immediate = stats.op_stats(0), vramobs.async_stats().immediate_total
    with vramobs.alloc(200_011) as buf:
        with buf.copy_from_async(data, 13, stream=None) as done:
            pass
        assert done.done()
        out = bytearray(len(data))
        buf.copy_to_async(out, 13, stream=7).wait()
        assert bytes(out) == data.tobytes()
        pinned = vramobs.pinned_empty(len(data))
        buf.copy_to_async(pinned, 13, stream=0).wait()
        assert bytes(pinned.view) == data.tobytes()
        pinned.close()
    after = stats.op_stats(0)
    assert after["memcpy_h2d"].calls - before["memcpy_h2d"].calls == 1
    assert after["memcpy_d2h"].bytes_ok - before["memcpy_d2h"].bytes_ok == 2 * len(data)
    assert vramobs.async_stats().immediate_total - immediate == 3


def test_async_device_copy_and_its_refusals(rng):
    data = rng.integers(1, 256, 8_191, dtype="u1").tobytes()
    with vramobs.to_device(data) as src, vramobs.alloc(10_000) as dst:
        dst.copy_from_async(src, 5, stream=None, src_offset=91, nbytes=4_001).wait()
        assert dst.to_bytes(5, 4_001) == data[91:4_092]
        with pytest.raises(OutOfBoundsError):
            dst.copy_from_async(src, 9_000, stream=None)
        with pytest.raises(InvalidArgumentError) as info:
            src.copy_from_async(src, 16, stream=None, nbytes=64)
        assert info.value.reason == "overlap"
        assert dst.to_bytes(5, 4_001) == data[91:4_092]  # refused copies wrote nothing


def test_async_refusals_match_the_synchronous_ones(rng):
    lib = _native.lib()
    out = ctypes.c_void_p(1)
    with vramobs.alloc(4096) as buf:
        host = ctypes.create_string_buffer(64)
        cases = [
            ((buf.ptr, host, 0), 2, "zero_size"),
            ((0, host, 16), 2, "null_pointer"),
            ((buf.ptr + 4090, host, 16), 6, "out_of_bounds"),
            ((0x1000, host, 16), 5, "unknown_pointer"),
        ]
        for args, code, reason in cases:
            assert lib.vram_memcpy_h2d_async(*args, 0, ctypes.byref(out)) == code
            assert out.value is None  # no completion on failure
            info = _native.ErrorInfo()
            lib.vram_last_error(ctypes.byref(info))
            assert lib.vram_reason_name(info.reason).decode() == reason
        assert lib.vram_memcpy_h2d_async(buf.ptr, host, 16, 0, None) == 2
    assert lib.vram_completion_wait(None) == 2
    assert lib.vram_completion_release(None) == 0


def test_copies_hold_their_buffers_and_closed_buffers_refuse():
    buf = vramobs.alloc(64)
    buf.close()
    with pytest.raises(ValueError):
        buf.copy_from_async(b"x" * 64, stream=None)


def test_stream_ordered_allocation_is_tracked_like_any_other(rng):
    data = rng.integers(1, 256, 3_000, dtype="u1").tobytes()
    live = vramobs.stats.registry_stats(0).live_count
    buf = vramobs.alloc_async(3_000, stream=None, tag="kv_cache")
    assert vramobs.stats.registry_stats(0).live_count == live + 1
    buf.copy_from(data)
    assert buf.to_bytes() == data
    assert buf.tag == "kv_cache"
    buf.close_async(stream=None)
    assert buf.closed
    buf.close_async(stream=None)  # idempotent
    assert vramobs.stats.registry_stats(0).live_count == live
    assert _native.lib().vram_free_async(0x1000, 1 << 62, 0) == 2  # never issued
    with vramobs.alloc(64) as other:
        assert _native.lib().vram_free_async(other.ptr + 64, other.generation, 0) == 2
        assert vramobs.stats.registry_stats(0).live_count == live + 1  # nothing freed


def test_the_exporter_shows_async_copies(rng):
    from prometheus_client import CollectorRegistry, generate_latest

    from vramobs.collector import VramCollector

    with vramobs.alloc(256) as buf:
        buf.copy_from_async(rng.integers(1, 256, 256, dtype="u1"), stream=None).wait()
    registry = CollectorRegistry()
    registry.register(VramCollector())
    text = generate_latest(registry).decode()
    immediate = vramobs.async_stats().immediate_total
    assert f'vramobs_async_copies_total{{outcome="immediate"}} {float(immediate)}' in text
    assert "vramobs_async_copies_pending 0.0" in text


# ---- the CUDA backend over the fake driver, deferred: real asynchrony -----------------------

STREAMS = r'''
from vramobs import streams

drv = fake()
drv.fakecuda_queued.restype = ctypes.c_long
VP = ctypes.c_void_p


def make_stream(device=0):
    """A stream of the device's primary context, as PyTorch would make one."""
    vramobs.device_count()  # the driver initialised
    ctx, dev, s = VP(), ctypes.c_int(), VP()
    assert drv.cuDeviceGet(ctypes.byref(dev), device) == 0
    assert drv.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert drv.cuCtxPushCurrent_v2(ctx) == 0
    assert drv.cuStreamCreate(ctypes.byref(s), 0) == 0
    assert drv.cuCtxPopCurrent_v2(ctypes.byref(VP())) == 0
    return s.value


def astats():
    return streams.async_stats()
'''


def test_a_copy_on_a_stream_completes_when_the_stream_runs(child):
    child(STREAMS + r'''
rnd = random.Random(SEED)
data = randbytes(rnd, 3 * MiB + 5)
s = make_stream()
buf = vramobs.alloc(len(data) + 64)
src = vramobs.pinned_empty(len(data)); src.view[:] = data
before, a0 = stats.op_stats(0)["memcpy_h2d"], astats()
done = buf.copy_from_async(src, 64, stream=s)
check("queued", drv.fakecuda_queued() > 0, True)
check("not done before the stream runs", done.done(), False)
check("pending", astats().pending - a0.pending, 1)
check("not counted yet", stats.op_stats(0)["memcpy_h2d"].calls - before.calls, 0)
done.wait()
after = stats.op_stats(0)["memcpy_h2d"]
check("counted once it completed", after.calls - before.calls, 1)
check("its bytes", after.bytes_ok - before.bytes_ok, len(data))
check("arrived", buf.to_bytes(64), data)
a1 = astats()
check("completed", (a1.completed_total - a0.completed_total, a1.pending - a0.pending), (1, 0))
out = vramobs.pinned_empty(len(data))
back = buf.copy_to_async(out, 64, stream=s)
check("read not yet done", bytes(out.view[:16]) == data[:16], False)
back.wait()
check("read back", bytes(out.view), data)
buf.close(); src.close(); out.close()
finish()
''', FAKECUDA_ASYNC="deferred")


def test_a_free_waits_for_copies_its_caller_never_waited_for(child):
    child(STREAMS + r'''
rnd = random.Random(SEED)
data = randbytes(rnd, 1 * MiB + 3)
s = make_stream()
buf = vramobs.alloc(len(data))
lib = vramobs._native.lib()
block = VP()
check("host_alloc", lib.vram_host_alloc(ctypes.byref(block), len(data)), 0)
ctypes.memmove(block.value, data, len(data))
a0 = astats()
handle = VP()
check("enqueued", lib.vram_memcpy_h2d_async(buf.ptr, block, len(data), s, ctypes.byref(handle)), 0)
# In Python the Completion keeps the host buffer exported; in C nothing stops this free:
check("host_free", lib.vram_host_free(block), 0)  # drained: copied before it is cleared
check("the copy was drained by the host free", astats().drained_total - a0.drained_total, 1)
check("bytes arrived before the block was cleared", buf.to_bytes(), data)
check("its completion answers at once", lib.vram_completion_release(handle), 0)
src = vramobs.pinned_empty(len(data)); src.view[:] = data
done = buf.copy_from_async(src, stream=s)
raises("a pinned buffer a copy still reads cannot close", BufferError, src.close)
done.wait(); src.close()
out = vramobs.pinned_empty(len(data))
pending = buf.copy_to_async(out, stream=s)
buf.close()  # the device buffer: drained before it is freed
check("drained by the device free", astats().drained_total - a0.drained_total, 2)
check("read complete", bytes(out.view), data)
check("nothing left queued", drv.fakecuda_queued(), 0)
pending.wait()  # already complete: answers at once
check("no allocation left", live(), 0)
out.close()
finish()
''', FAKECUDA_ASYNC="deferred")


def test_pageable_memory_is_copied_at_the_call_after_the_stream(child):
    child(STREAMS + r'''
rnd = random.Random(SEED)
data = randbytes(rnd, 2 * MiB + 1)
s = make_stream()
buf = vramobs.alloc(len(data))
a0 = astats()
done = buf.copy_from_async(data, stream=s)
check("done at the call", done.done(), True)
check("counted immediate", astats().immediate_total - a0.immediate_total, 1)
check("stream synchronized first", calls("cuStreamSynchronize") > 0, True)
check("bytes", buf.to_bytes(), data)
buf.close()
finish()
''', FAKECUDA_ASYNC="deferred")


def test_streams_of_another_device_or_unknown_handles_are_refused(child):
    child(STREAMS + r'''
s1 = make_stream(1)
buf = vramobs.alloc(4096)
src = vramobs.pinned_empty(4096)
for what, handle in (("another device's stream", s1), ("a made-up handle", 0xdead000)):
    e = raises(what, errors.InvalidArgumentError, buf.copy_from_async, src, stream=handle)
    check(what + ": reason", getattr(e, "reason", None), "invalid_stream")
check("refusals counted", stats.op_stats(0)["memcpy_h2d"].refused.get("invalid_stream"), 2)
check("nothing pending", astats().pending, 0)
e = raises("allocation on a foreign stream", errors.InvalidArgumentError, vramobs.alloc_async, 64, stream=s1)
buf.close(); src.close()
finish()
''', FAKECUDA_DEVICES=2, FAKECUDA_ASYNC="deferred")


def test_faults_on_streams(child):
    child(STREAMS + r'''
rnd = random.Random(SEED)
s = make_stream()
buf = vramobs.alloc(1 * MiB)
src = vramobs.pinned_empty(1 * MiB); src.view[:] = randbytes(rnd, 1 * MiB)
inject("cuMemcpyHtoDAsync", 1)  # CUDA_ERROR_INVALID_VALUE at the enqueue
raises("enqueue failure", errors.CopyError, buf.copy_from_async, src, stream=s)
check("nothing pending after a failed enqueue", astats().pending, 0)
done = buf.copy_from_async(src, stream=s)
inject("cuEventSynchronize", 700, sticky=True)  # an illegal address, seen at the wait
raises("sticky failure at the wait", errors.DeviceFailedError, done.wait)
check("device latched", vramobs.device_state(0), DeviceState.FAILED)
check("failed copies counted", astats().failed_total, 1)
finish()
''', FAKECUDA_ASYNC="deferred")


def test_stream_ordered_allocation_uses_the_stream(child):
    child(STREAMS + r'''
rnd = random.Random(SEED)
s = make_stream()
data = randbytes(rnd, 5000)
n0, f0, m0 = calls("cuMemAllocAsync"), calls("cuMemFreeAsync"), calls("cuMemsetD8Async")
buf = vramobs.alloc_async(5000, stream=s, tag="activations")
check("cuMemAllocAsync", calls("cuMemAllocAsync") - n0, 1)
buf.copy_from(data)
check("bytes", buf.to_bytes(), data)
raw_ok = _native_wipe = vramobs._native.lib().vram_set_allocation_wipe(buf.ptr, buf.generation, 1)
check("wipe set", raw_ok, 0)
buf.close_async(s)
check("cuMemFreeAsync", calls("cuMemFreeAsync") - f0, 1)
check("zeroed on the stream first", calls("cuMemsetD8Async") - m0, 1)
drv.fakecuda_run_all()
check("nothing left", live(), 0)
plain = vramobs.alloc(4096)
plain.close_async(s)  # not stream-ordered: freed after the stream, as vram_free does
check("no cuMemFreeAsync for cuMemAlloc memory", calls("cuMemFreeAsync") - f0, 1)
check("nothing left either", live(), 0)
finish()
''', FAKECUDA_ASYNC="deferred")


def test_threads_copy_on_streams_while_others_free(child):
    """Threads hand copies to their streams and, at random, wait for them, poll them, or free
    the buffer or the pinned memory first; every byte checked, nothing pending or live after."""
    child(STREAMS + r'''
lib = vramobs._native.lib()
errors_seen = []


def worker(index):
    rnd = random.Random(SEED + index)
    s = make_stream()
    try:
        for _ in range(60):
            n = rnd.randrange(1, 300_000)
            data = randbytes(rnd, n)
            buf = vramobs.alloc(n + 64)
            block = VP()
            assert lib.vram_host_alloc(ctypes.byref(block), n) == 0
            ctypes.memmove(block.value, data, n)
            up, down = VP(), VP()
            assert lib.vram_memcpy_h2d_async(buf.ptr + 64, block, n, s, ctypes.byref(up)) == 0
            out = VP()
            assert lib.vram_host_alloc(ctypes.byref(out), n) == 0
            assert lib.vram_memcpy_d2h_async(out, buf.ptr + 64, n, s, ctypes.byref(down)) == 0
            choice = rnd.randrange(4)
            if choice == 0:
                assert lib.vram_completion_wait(down) == 0
            elif choice == 1:
                flag = ctypes.c_int()
                while lib.vram_completion_query(down, ctypes.byref(flag)) == 0 and not flag.value:
                    drv.cuStreamSynchronize(VP(s))
            elif choice == 2:
                buf.close()  # drains both copies
            got = ctypes.string_at(out.value, n) if choice != 3 else None
            if choice == 3:
                assert lib.vram_host_free(out) == 0  # drains the read into it first
            assert lib.vram_completion_release(up) == 0
            assert lib.vram_completion_release(down) == 0
            if got is not None and got != data:
                errors_seen.append(f"thread {index}: bytes differ after choice {choice}")
            assert lib.vram_host_free(block) == 0
            if choice != 3:
                assert lib.vram_host_free(out) == 0
            buf.close()
    except Exception as exc:
        errors_seen.append(f"thread {index}: {exc!r}\n{traceback.format_exc()}")


threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("threads", errors_seen, [])
a = astats()
check("nothing pending", a.pending, 0)
check("every enqueued copy completed", a.completed_total, a.enqueued_total)
check("drains happened", a.drained_total > 0, True)
check("no device memory left", live(), 0)
check("no pinned block in use", vramobs.host_stats().live_count, 0)
finish()
''', timeout=180, FAKECUDA_ASYNC="deferred")


def test_a_copy_whose_end_cannot_be_established_fails_its_device(child):
    """The wait fails and so does waiting for the whole context: the copy may still be running,
    so its memory cannot be released to anyone: the device is latched failed."""
    child(STREAMS + r'''
rnd = random.Random(SEED)
s = make_stream()
buf = vramobs.alloc(1 * MiB)
src = vramobs.pinned_empty(1 * MiB); src.view[:] = randbytes(rnd, 1 * MiB)
done = buf.copy_from_async(src, stream=s)
inject("cuEventSynchronize", 1)  # invalid value: not sticky by itself
inject("cuCtxSynchronize", 1)
raises("wait", errors.DeviceFailedError, done.wait)
check("device latched", vramobs.device_state(0), DeviceState.FAILED)
check("counted failed", astats().failed_total, 1)
finish()
''', FAKECUDA_ASYNC="deferred")
