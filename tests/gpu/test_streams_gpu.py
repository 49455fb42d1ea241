"""Copies and allocation on caller streams on a real GPU, with the streams of PyTorch, CuPy and
cuda-python: stream order against the callers' own kernels, completion, a free that drains a
copy its caller never waited for, refusals of another device's stream, stream-ordered
allocation, and the copies counted with the device's time when they complete."""

from __future__ import annotations

import numpy as np
import pytest

import vramobs
from vramobs import stats

MIB = 1 << 20
torch = pytest.importorskip("torch")
cupy = pytest.importorskip("cupy")


def _torch_stream():
    return torch.cuda.Stream(device=0)


def _cupy_stream():
    with cupy.cuda.Device(0):
        return cupy.cuda.Stream(non_blocking=True)


def _cuda_python_stream():
    from cuda.bindings import runtime

    err, stream = runtime.cudaStreamCreateWithFlags(runtime.cudaStreamNonBlocking)
    assert err == runtime.cudaError_t.cudaSuccess
    return stream


@pytest.mark.parametrize("make", [_torch_stream, _cupy_stream, _cuda_python_stream])
def test_copies_follow_the_callers_kernels_in_stream_order(make, random_bytes) -> None:  # type: ignore[no-untyped-def]
    """A kernel of the caller's writes the buffer on its stream; the async read queued after it
    on the same stream, with no synchronization between, must see the kernel's bytes."""
    n = 64 * MIB + 3
    stream = make()
    data = random_bytes(n)
    src, out = vramobs.pinned_empty(n), vramobs.pinned_empty(n)
    src.view[:] = data.tobytes()
    with vramobs.alloc(n) as buf:
        buf.copy_from_async(src, stream=stream).wait()
        view = torch.as_tensor(buf, device="cuda")
        value = int(data[0] ^ 0x5A) or 1
        with torch.cuda.stream(torch.cuda.ExternalStream(vramobs.stream_handle(stream))):
            view[: n // 2].fill_(value)  # the caller's kernel, on the caller's stream
        done = buf.copy_to_async(out, stream=stream)
        done.wait()
        got = np.frombuffer(bytes(out.view), np.uint8)  # a copy: out closes below
        assert (got[: n // 2] == value).all()
        assert np.array_equal(got[n // 2 :], data[n // 2 :])
    src.close()
    out.close()


def test_completion_is_observed_and_counted_with_the_device_time(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 256 * MIB
    stream = torch.cuda.Stream(device=0)
    src = vramobs.pinned_empty(n)
    src.view[:] = random_bytes(n).tobytes()
    before = stats.op_stats(0)["memcpy_h2d"]
    a0 = vramobs.async_stats()
    with vramobs.alloc(n) as buf:
        done = buf.copy_from_async(src, stream=stream)
        assert vramobs.async_stats().pending == a0.pending + 1
        done.wait()
        assert done.done()
        assert buf.to_bytes(n - 4096) == bytes(src.view[n - 4096 :])
    after = stats.op_stats(0)["memcpy_h2d"]
    assert after.calls - before.calls == 1
    assert after.bytes_ok - before.bytes_ok == n
    device_seconds = after.latency_ok.total - before.latency_ok.total
    # Timed by the device: 256 MiB over PCIe takes milliseconds, never nothing.
    assert 0.5e-3 < device_seconds < 1.0
    a1 = vramobs.async_stats()
    assert (a1.completed_total - a0.completed_total, a1.pending) == (1, a0.pending)
    src.close()


def test_a_free_drains_a_copy_nobody_waited_for(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 512 * MIB
    stream = torch.cuda.Stream(device=0)
    data = random_bytes(4096)
    out = vramobs.pinned_empty(n)
    a0 = vramobs.async_stats()
    buf = vramobs.alloc(n)
    buf.copy_from(data, n - 4096)
    done = buf.copy_to_async(out, stream=stream)
    buf.close()  # while the 512 MiB read is in flight
    assert vramobs.async_stats().drained_total - a0.drained_total == 1
    assert bytes(out.view[n - 4096 :]) == data.tobytes()
    done.wait()
    out.close()


def test_both_directions_on_two_streams_at_once(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 128 * MIB
    up, down = torch.cuda.Stream(device=0), torch.cuda.Stream(device=0)
    src, out = vramobs.pinned_empty(n), vramobs.pinned_empty(n)
    data = random_bytes(n)
    src.view[:] = data.tobytes()
    with vramobs.to_device(data) as a, vramobs.alloc(n) as b:
        first = b.copy_from_async(src, stream=up)
        second = a.copy_to_async(out, stream=down)
        first.wait()
        second.wait()
        assert np.array_equal(np.frombuffer(out.view, np.uint8), data)
        assert b.to_bytes(0, MIB) == data[:MIB].tobytes()
    src.close()
    out.close()


def test_device_copy_on_a_stream(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 32 * MIB + 7
    data = random_bytes(n)
    stream = torch.cuda.Stream(device=0)
    with vramobs.to_device(data) as a, vramobs.alloc(n + 100) as b:
        b.copy_from_async(a, 100, stream=stream).wait()
        assert b.to_bytes(100) == data.tobytes()


def test_another_devices_stream_is_refused() -> None:
    if vramobs.device_count() < 2:
        pytest.skip("needs two GPUs")
    other = torch.cuda.Stream(device=1)
    with vramobs.alloc(4096) as buf:
        with pytest.raises(vramobs.InvalidArgumentError) as info:
            buf.copy_from_async(bytes(4096), stream=other)
        assert info.value.reason == "invalid_stream"


def test_stream_ordered_allocation_with_a_torch_stream(random_bytes) -> None:  # type: ignore[no-untyped-def]
    n = 8 * MIB + 1
    stream = torch.cuda.Stream(device=0)
    data = random_bytes(n)
    before = stats.registry_stats(0).live_count
    buf = vramobs.alloc_async(n, stream=stream, tag="activations")
    assert stats.registry_stats(0).live_count == before + 1
    src = vramobs.pinned_empty(n)
    src.view[:] = data.tobytes()
    buf.copy_from_async(src, stream=stream).wait()
    assert buf.to_bytes() == data.tobytes()
    buf.close_async(stream)
    stream.synchronize()
    assert stats.registry_stats(0).live_count == before
    src.close()
