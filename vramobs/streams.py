"""Asynchronous copies and allocation on CUDA streams.

Any stream a service already has works: a PyTorch ``torch.cuda.Stream``, a CuPy
``cupy.cuda.Stream``, a cuda-python ``CUstream`` / ``cudaStream_t`` or ``cuda.core`` stream
(anything with the ``__cuda_stream__`` protocol), or the handle as an int; ``None`` is the
legacy default stream. The stream must belong to the buffer's device.

An async copy is checked like a synchronous one (bounds, ownership: the same exceptions,
raised at the call) and returns a :class:`Completion`. Until it completes, the copy holds
its buffers and host memory: closing the buffer waits for it, and the host object stays
exported (it cannot be resized or freed). Copies from or to page-locked memory
(:func:`vramobs.pinned_empty`, :func:`vramobs.register_host`) run truly asynchronously; with
ordinary host memory the copy is done when the call returns, after the stream's earlier work,
as CUDA does it. Copies are counted when they complete, with the device's own time.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from . import _hostbuf, _native, leaks, tags, tracing
from .device import _on_device, current_device
from .errors import InvalidArgumentError, check

if TYPE_CHECKING:
    from .buffer import DeviceBuffer

__all__ = ["AsyncStats", "Completion", "alloc_async", "async_stats", "stream_handle"]


def stream_handle(stream: Any) -> int:
    """The CUstream handle of ``stream`` as an int (``None``: 0, the legacy default stream).

    Accepts an int, an object with ``__cuda_stream__()`` (the CUDA stream protocol: it returns
    ``(version, handle)``), PyTorch streams (``cuda_stream``), CuPy streams (``ptr``) and
    cuda-python handles (``getPtr()`` or ``int()``).
    """
    if stream is None:
        return 0
    if isinstance(stream, bool):
        raise InvalidArgumentError(f"not a CUDA stream: {stream!r}", reason="invalid_stream")
    if isinstance(stream, int):
        handle = stream
    elif hasattr(stream, "__cuda_stream__"):
        handle = stream.__cuda_stream__()[1]
    elif hasattr(stream, "cuda_stream"):
        handle = stream.cuda_stream
    elif hasattr(stream, "ptr") and not callable(stream.ptr):
        handle = stream.ptr
    elif hasattr(stream, "getPtr"):
        handle = stream.getPtr()
    elif hasattr(type(stream), "__int__") and not isinstance(stream, (float, complex)):
        handle = int(stream)
    else:
        raise InvalidArgumentError(
            f"not a CUDA stream: {type(stream).__name__}", reason="invalid_stream"
        )
    if not isinstance(handle, int) or isinstance(handle, bool) or not 0 <= handle < 1 << 64:
        raise InvalidArgumentError(f"not a CUDA stream handle: {handle!r}", reason="invalid_stream")
    return handle


class Completion:
    """A copy handed to a stream. ``done()`` polls; ``wait()`` blocks until the copy is
    complete and raises if it failed on the device (CopyFailedError, DeviceFailedError).
    Used as a context manager, it waits on exit. A completion dropped without a wait is
    waited for when it is garbage-collected, so the memory it holds is never released under
    the copy."""

    __slots__ = ("_handle", "_view", "_keep", "_nbytes", "_lock", "_status")

    def __init__(self, handle: int, view: Any, keep: tuple, nbytes: int) -> None:
        self._handle = handle
        self._view = view  # the exported host buffer, released once the copy is complete
        self._keep = keep  # what the copy reads or writes: alive until then
        self._nbytes = nbytes
        self._lock = threading.Lock()
        self._status: Optional[int] = None

    def _finish(self) -> int:
        with self._lock:
            if self._status is None:
                self._status = _native.lib().vram_completion_release(self._handle)
                if self._view is not None:
                    _hostbuf.release(self._view)
                self._view = self._keep = None
            return self._status

    def done(self) -> bool:
        """Whether the copy is complete (never blocks)."""
        with self._lock:
            if self._status is not None:
                return True
            flag = ctypes.c_int()
            check(_native.lib().vram_completion_query(self._handle, ctypes.byref(flag)))
            if not flag.value:
                return False
        self._finish()
        return True

    def wait(self) -> None:
        """Block until the copy is complete; raise if it failed."""
        status = self._finish()
        if status:
            check(status, f"async copy of {self._nbytes} bytes")

    def __enter__(self) -> Completion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()

    def __del__(self) -> None:
        if getattr(self, "_status", 0) is None:
            self._finish()

    def __repr__(self) -> str:
        state = "pending" if self._status is None else f"status={self._status}"
        return f"<Completion {self._nbytes} bytes, {state}>"


def _start(op: str, call: Any, args: tuple, nbytes: int, device: int) -> int:
    """Run the C call that hands a copy to its stream; returns the completion handle."""
    out = ctypes.c_void_p()

    def run() -> int:
        return call(*args, out)

    status = tracing.traced(op, run, nbytes=nbytes, device=device) if tracing.active() else run()
    if status:
        check(status, f"async copy of {nbytes} bytes")
    return out.value or 0


def copy_host_async(
    buf: DeviceBuffer, to_device: bool, host_object: Any, offset: int, stream: Any
) -> Completion:
    """DeviceBuffer.copy_from_async / copy_to_async with host memory."""
    handle = stream_handle(stream)
    view = _hostbuf.acquire(host_object, not to_device)
    try:
        nbytes = view.len
        device_address = buf._span(offset, nbytes)
        lib = _native.lib()
        if to_device:
            call, args = lib.vram_memcpy_h2d_async, (device_address, view.buf or 0, nbytes, handle)
        else:
            call, args = lib.vram_memcpy_d2h_async, (view.buf or 0, device_address, nbytes, handle)
        op = "memcpy_h2d_async" if to_device else "memcpy_d2h_async"
        completion = _start(op, call, args, nbytes, buf._device)
    except BaseException:
        _hostbuf.release(view)
        raise
    return Completion(completion, view, (buf, host_object), nbytes)


def copy_device_async(
    dst: DeviceBuffer, src: DeviceBuffer, offset: int, src_offset: int, nbytes: Optional[int],
    stream: Any,
) -> Completion:
    """DeviceBuffer.copy_from_async with a DeviceBuffer source."""
    handle = stream_handle(stream)
    count = src._nbytes - src_offset if nbytes is None else nbytes
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidArgumentError(f"nbytes must be a non-negative int, got {nbytes!r}")
    source = src._span(src_offset, count)
    target = dst._span(offset, count)
    args = (target, source, count, handle)
    call = _native.lib().vram_memcpy_d2d_async
    completion = _start("memcpy_d2d_async", call, args, count, dst._device)
    return Completion(completion, None, (dst, src), count)


def alloc_async(
    nbytes: int, *, stream: Any, device: Optional[int] = None, tag: Optional[str] = None
) -> DeviceBuffer:
    """Allocate ``nbytes`` in stream order (``cuMemAllocAsync``, the device's default pool):
    usable at once by work on ``stream``. Close it with ``close(stream=...)`` to free it in
    stream order too, or plainly. Otherwise as :func:`vramobs.alloc`."""
    from .buffer import DeviceBuffer  # buffer.py imports this module

    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 0 <= nbytes < 1 << 64:
        raise InvalidArgumentError(f"nbytes must be an int in [1, 2**64), got {nbytes!r}")
    handle = stream_handle(stream)
    tag_id = 0 if tag is None else tags.tag_id(tag)
    ptr, generation = ctypes.c_void_p(), ctypes.c_uint64()
    malloc_async = _native.lib().vram_malloc_async
    with _on_device(device):
        where = current_device()

        def run() -> int:
            return malloc_async(ptr, nbytes, tag_id, generation, handle)

        if tracing.active():
            status = tracing.traced("malloc", run, nbytes=nbytes, device=where)
        else:
            status = run()
        if status:
            check(status, f"allocating {nbytes} bytes on a stream")
    buf = DeviceBuffer._adopt(ptr.value, nbytes, generation.value, where, tags.tag_name(tag_id))
    leaks.remember(generation.value)
    return buf


@dataclass(frozen=True)
class AsyncStats:
    """Copies on streams."""

    pending: int  # handed to a stream, not yet seen complete
    enqueued_total: int  # handed to a stream
    immediate_total: int  # done when the call returned (ordinary host memory, no peer path)
    completed_total: int  # seen complete, successfully
    failed_total: int  # failed on the device
    drained_total: int  # waited for by a free before their caller waited


def async_stats() -> AsyncStats:
    """Counters of the copies on streams, for the whole process."""
    snap = _native.AsyncStats()
    check(_native.lib().vram_async_stats_get(ctypes.byref(snap), ctypes.sizeof(snap)))
    return AsyncStats(**{name: getattr(snap, name) for name, _ in snap._fields_[2:]})
