"""DeviceBuffer: an owned allocation of device memory.

A buffer frees exactly its own allocation, once: it remembers the allocation's generation
and frees through ``vram_free_ex``, so a buffer closed after its address was freed elsewhere
and handed to a new allocation cannot free the newcomer. It is freed on ``close()``, at the
end of a ``with`` block, or when garbage-collected (then it is counted as leaked and a
ResourceWarning names the code that allocated it).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import sys
import threading
import warnings
from typing import Any, Optional

from . import _hostbuf, _native, leaks, retry, streams, tags, tracing
from .device import _on_device, current_device
from .device import _thread as _device_thread  # current_device()'s per-thread mirror
from .errors import (
    DeviceFailedError,
    InvalidArgumentError,
    OutOfBoundsError,
    OutOfMemoryError,
    check,
)

__all__ = [
    "DeviceBuffer",
    "alloc",
    "copy_path",
    "to_device",
    "set_wipe_on_free",
    "wipe_on_free",
]

_WIPE_OFF, _WIPE_ON_FREE = 0, 1


def set_wipe_on_free(enabled: bool) -> None:
    """Overwrite every allocation made from now on with zeros before it is freed (a device
    memset, counted as the operation ``wipe``), so that no later allocation in this process
    can read its bytes. ``alloc(..., wipe=...)`` overrides it per buffer."""
    check(_native.lib().vram_set_wipe_policy(_WIPE_ON_FREE if enabled else _WIPE_OFF))


def wipe_on_free() -> bool:
    """Whether new allocations are wiped before they are freed."""
    policy = ctypes.c_int()
    check(_native.lib().vram_get_wipe_policy(ctypes.byref(policy)))
    return policy.value == _WIPE_ON_FREE

# Buffers alive at exit (model weights) go with the process: no warning, no free.
_exiting = False
_closing = threading.Lock()
_lock_closing, _unlock_closing = _closing.acquire, _closing.release  # cheaper than ``with``

# The hot pair, vram_malloc_ex and vram_free_ex, as ctypes functions without argtypes, bound
# on first use: ctypes converts each argument of a function with argtypes through a Python
# call, which costs more than the C call itself. Every argument passed to them must be a
# ctypes object of its C type (or a byref of one), except the tag: an int below 64, which a
# C int carries.
_hot: Optional[tuple[Any, Any]] = None
_U64_LIMIT = 1 << 64


def _bind_hot() -> tuple[Any, Any]:
    global _hot
    lib = _native.lib()
    _hot = (lib._FuncPtr(("vram_malloc_ex", lib)), lib._FuncPtr(("vram_free_ex", lib)))
    return _hot


# Argument sets for the hot pair: (pointer, generation, byref of each, size). A call pops one
# and puts it back when done (list.pop and append are atomic), so no other call, on another
# thread or re-entering this one (a signal handler, a finalizer), can write into it.
_ArgSet = tuple[ctypes.c_void_p, ctypes.c_uint64, Any, Any, ctypes.c_size_t]
_spare: list[_ArgSet] = []


def _new_args() -> _ArgSet:
    ptr, generation = ctypes.c_void_p(), ctypes.c_uint64()
    return ptr, generation, ctypes.byref(ptr), ctypes.byref(generation), ctypes.c_size_t()


def _take_args() -> _ArgSet:
    try:
        return _spare.pop()
    except IndexError:
        return _new_args()


def _free(address: int, generation: int, nbytes: int, device: int) -> int:
    """vram_free_ex(address, generation), traced when spans are on; returns the status."""
    free_ex = (_hot or _bind_hot())[1]
    args = _take_args()
    ptr, gen = args[0], args[1]
    ptr.value = address
    gen.value = generation
    if tracing.active():
        status = tracing.traced("free", functools.partial(free_ex, ptr, gen), nbytes=nbytes,
                                device=device)
    else:
        status = free_ex(ptr, gen)
    _spare.append(args)
    return status


def _at_exit() -> None:
    global _exiting
    _exiting = True


atexit.register(_at_exit)


def _nonnegative(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative int, got {value!r}")
    return value


class DeviceBuffer:
    """Device memory owned by this object. Made by :func:`alloc` or :func:`to_device`.

    Exposes ``__cuda_array_interface__`` (version 3) as a 1-D array of bytes, so
    ``torch.as_tensor(buf, device="cuda")`` and ``cupy.asarray(buf)`` view it without a copy;
    such a view keeps the buffer alive.
    """

    # No reference cycles are possible through these slots, so __del__ runs as soon as the
    # last reference goes (a weakref.finalize would cost a microsecond per buffer).
    __slots__ = ("_address", "_nbytes", "_generation", "_device", "_tag", "_open", "__weakref__")

    def __new__(cls, *args: Any, **kwargs: Any) -> DeviceBuffer:
        raise TypeError("DeviceBuffer objects are made by vramobs.alloc() or vramobs.to_device()")

    @classmethod
    def _adopt(cls, address: int, nbytes: int, generation: int, device: int, tag: str) -> DeviceBuffer:
        self = object.__new__(cls)
        self._address = address
        self._nbytes = nbytes
        self._generation = generation
        self._device = device
        self._tag = tag
        self._open = True
        return self

    def __del__(self) -> None:
        try:
            if not self._open or _exiting:
                return
        except AttributeError:  # interrupted while being made: it owns nothing yet
            return
        self._open = False
        _free(self._address, self._generation, self._nbytes, self._device)
        site = leaks.collected(self._generation, self._device, self._nbytes)
        warnings.warn(
            f"DeviceBuffer of {self._nbytes} bytes on device {self._device} was "
            f"garbage-collected without close(); allocated at {site}",
            ResourceWarning,
            stacklevel=2,
        )

    # -- identity ----------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Size in bytes, as asked for."""
        return self._nbytes

    def __len__(self) -> int:
        return self._nbytes

    @property
    def ptr(self) -> int:
        """The device address. Raises ValueError once closed."""
        self._check_open()
        return self._address

    @property
    def device(self) -> int:
        return self._device

    @property
    def tag(self) -> str:
        return self._tag

    @property
    def generation(self) -> int:
        """A number unique to this allocation for the life of the process."""
        return self._generation

    @property
    def closed(self) -> bool:
        return not self._open

    def __repr__(self) -> str:
        state = "closed" if not self._open else f"device={self._device}"
        return f"<DeviceBuffer {self._nbytes} bytes, {state}, tag={self._tag!r}>"

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the device memory. Idempotent. If the driver fails to free it, raises and the
        buffer stays open (close again to retry); if its device failed, the memory is lost
        with the device: the buffer closes and DeviceFailedError is raised."""
        _lock_closing()  # one closer frees; the others find it closed
        try:
            was_open = self._open
            self._open = False
        finally:
            _unlock_closing()
        if not was_open:
            return
        status = _free(self._address, self._generation, self._nbytes, self._device)
        if status == 0:
            _forget_site(self._generation, None)
            return
        if status == DeviceFailedError.code:
            leaks.forget(self._generation)
        else:
            self._open = True  # still allocated: closing again retries
        check(status, f"freeing {self._nbytes} bytes")

    def close_async(self, stream: Any) -> None:
        """Free the device memory in ``stream``'s order: the buffer closes at once and its
        memory goes back after the stream's earlier work (``cuMemFreeAsync`` for buffers of
        :func:`~vramobs.streams.alloc_async`, after a wait for the stream otherwise)."""
        handle = streams.stream_handle(stream)
        free_async = _native.lib().vram_free_async
        with _closing:
            if not self._open:
                return
            self._open = False

        def call() -> int:
            return free_async(self._address, self._generation, handle)

        status = (
            tracing.traced("free", call, nbytes=self._nbytes, device=self._device)
            if tracing.active()
            else call()
        )
        if status == 0 or status == DeviceFailedError.code:
            leaks.forget(self._generation)
        else:
            self._open = True
        if status:
            check(status, f"freeing {self._nbytes} bytes on a stream")

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._open:
            raise ValueError("operation on a closed DeviceBuffer")

    # -- copies ------------------------------------------------------------------------------

    def _span(self, offset: int, nbytes: int) -> int:
        """Check [offset, offset + nbytes) against the buffer in Python, before C is called."""
        if not self._open:
            raise ValueError("operation on a closed DeviceBuffer")
        if type(offset) is not int or offset < 0:
            _nonnegative("offset", offset)
        if offset + nbytes > self._nbytes:
            raise OutOfBoundsError(
                f"{nbytes} bytes at offset {offset} run past the end of a "
                f"{self._nbytes}-byte buffer",
                reason="out_of_bounds",
            )
        return self._address + offset

    def _copy(self, to_device: bool, host_object: Any, offset: int) -> None:
        view = _hostbuf.acquire(host_object, not to_device)
        try:
            nbytes = view.len
            device_address = self._span(offset, nbytes)
            host = view.buf or 0
            lib = _native.lib()
            if to_device:
                call, args = lib.vram_memcpy_h2d, (device_address, host, nbytes)
            else:
                call, args = lib.vram_memcpy_d2h, (host, device_address, nbytes)
            if tracing.active():
                op = "memcpy_h2d" if to_device else "memcpy_d2h"
                status = tracing.traced(op, lambda: call(*args), nbytes=nbytes, device=self._device)
            else:
                status = call(*args)
        finally:
            _hostbuf.release(view)
        if status:
            check(status, f"copy of {nbytes} bytes")

    def copy_from(
        self, src: Any, offset: int = 0, *, src_offset: int = 0, nbytes: Optional[int] = None
    ) -> None:
        """Copy all of host buffer ``src`` into this buffer, starting at ``offset``.

        ``src`` may also be a DeviceBuffer on any device: then ``nbytes`` bytes (default: to
        its end) from ``src_offset`` are copied, within the GPU, peer to peer between GPUs
        that allow it, or else through host memory (see :func:`copy_path`).
        """
        if isinstance(src, DeviceBuffer):
            self._copy_device(src, offset, src_offset, nbytes)
            return
        if src_offset or nbytes is not None:
            raise InvalidArgumentError("src_offset and nbytes apply to DeviceBuffer sources only")
        self._copy(True, src, offset)

    def _copy_device(self, src: DeviceBuffer, offset: int, src_offset: int, nbytes: Optional[int]) -> None:
        _nonnegative("src_offset", src_offset)
        count = src._nbytes - src_offset if nbytes is None else _nonnegative("nbytes", nbytes)
        source = src._span(src_offset, count)
        target = self._span(offset, count)
        d2d = _native.lib().vram_memcpy_d2d
        if tracing.active():
            op = "memcpy_" + copy_path(src._device, self._device)
            status = tracing.traced(
                op, lambda: d2d(target, source, count), nbytes=count, device=self._device
            )
        else:
            status = d2d(target, source, count)
        if status:
            check(status, f"device copy of {count} bytes")

    def copy_to(self, dst: Any, offset: int = 0) -> None:
        """Fill all of writable host buffer ``dst`` from this buffer, starting at ``offset``."""
        self._copy(False, dst, offset)

    # -- copies on streams (vramobs.streams) -------------------------------------------------

    def copy_from_async(
        self,
        src: Any,
        offset: int = 0,
        *,
        stream: Any,
        src_offset: int = 0,
        nbytes: Optional[int] = None,
    ) -> streams.Completion:
        """:meth:`copy_from` on ``stream`` (a PyTorch, CuPy or cuda-python stream, a
        ``__cuda_stream__`` object or a handle): returns a :class:`~vramobs.streams.Completion`
        to wait for. Checked at the call like :meth:`copy_from`."""
        if isinstance(src, DeviceBuffer):
            _nonnegative("src_offset", src_offset)
            return streams.copy_device_async(self, src, offset, src_offset, nbytes, stream)
        if src_offset or nbytes is not None:
            raise InvalidArgumentError("src_offset and nbytes apply to DeviceBuffer sources only")
        return streams.copy_host_async(self, True, src, offset, stream)

    def copy_to_async(self, dst: Any, offset: int = 0, *, stream: Any) -> streams.Completion:
        """:meth:`copy_to` on ``stream``; returns a Completion to wait for."""
        return streams.copy_host_async(self, False, dst, offset, stream)

    def to_bytes(self, offset: int = 0, nbytes: Optional[int] = None) -> bytes:
        """Read ``nbytes`` (default: to the end) starting at ``offset`` into new bytes."""
        _nonnegative("offset", offset)
        count = self._nbytes - offset if nbytes is None else _nonnegative("nbytes", nbytes)
        if count == 0 and offset <= self._nbytes:
            self._check_open()
            return b""
        out = bytearray(max(count, 0))
        self.copy_to(out, offset)
        return bytes(out)

    # -- placement ---------------------------------------------------------------------------

    def migrate(self, device: int) -> DeviceBuffer:
        """Move this buffer's bytes to ``device`` and return the buffer that holds them there.

        All or nothing: on success this buffer is closed and the new one (same size, tag and
        wipe policy) is returned; on failure this buffer is untouched and the exception says
        why. Migrating to the buffer's own device returns this buffer.
        """
        self._check_open()
        new_ptr, new_generation = ctypes.c_void_p(), ctypes.c_uint64()
        migrate = _native.lib().vram_migrate

        def call() -> int:
            return migrate(self._address, self._generation, device, new_ptr, new_generation)

        with _closing:
            if not self._open:
                raise ValueError("operation on a closed DeviceBuffer")
            if tracing.active():
                status = tracing.traced("migrate", call, nbytes=self._nbytes, device=device)
            else:
                status = call()
            if status:
                check(status, f"migrating {self._nbytes} bytes to device {device}")
            if new_generation.value == self._generation:
                return self
            self._open = False
        leaks.moved(self._generation, new_generation.value)
        return DeviceBuffer._adopt(
            new_ptr.value, self._nbytes, new_generation.value, device, self._tag
        )

    # -- interoperability --------------------------------------------------------------------

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": (self._nbytes,),
            "typestr": "|u1",
            "data": (self.ptr, False),
            "version": 3,
            "strides": None,
            # Copies through vramobs are synchronous: a consumer need not synchronize.
            "stream": None,
        }


_PATHS = {0: "d2d", 1: "p2p", 2: "staged"}


def copy_path(src_device: int, dst_device: int) -> str:
    """How copies from ``src_device`` to ``dst_device`` travel: ``"d2d"`` within one device,
    ``"p2p"`` peer to peer between devices, ``"staged"`` through host memory. The metrics
    count copies under ``memcpy_<path>``."""
    path = ctypes.c_int()
    check(_native.lib().vram_copy_path_get(src_device, dst_device, ctypes.byref(path)))
    return _PATHS[path.value]


_THIS_DEVICE = contextlib.nullcontext()  # no device switch: cheaper than _on_device(None)
_new_object = object.__new__
_getframe = sys._getframe
_sites = leaks._sites  # generation -> where it was made (leaks.py)
_forget_site = _sites.pop


def alloc(
    nbytes: int,
    *,
    device: Optional[int] = None,
    tag: Optional[str] = None,
    wipe: Optional[bool] = None,
) -> DeviceBuffer:
    """Allocate ``nbytes`` of device memory (on this thread's device unless ``device`` is given).

    ``tag`` names the owner (``"weights"``, ``"kv_cache"``, ...) from a small declared set.
    ``wipe`` (default: :func:`wipe_on_free`) zeroes the memory before it is freed.
    Out-of-memory is retried as :mod:`vramobs.retry` is configured (not by default).
    Raises OutOfMemoryError, InvalidArgumentError, NoDeviceError or DeviceFailedError.
    """
    if type(nbytes) is not int:
        if not isinstance(nbytes, int) or isinstance(nbytes, bool):
            raise InvalidArgumentError(f"nbytes must be an int, got {nbytes!r}")
        nbytes = int(nbytes)
    if not 0 <= nbytes < _U64_LIMIT:
        raise InvalidArgumentError(f"nbytes must be in [1, 2**64), got {nbytes}")
    tag_id = 0 if tag is None else tags.tag_id(tag)
    malloc_ex = (_hot or _bind_hot())[0]
    args = _take_args()
    ptr, generation, ptr_ref, generation_ref, size = args
    size.value = nbytes
    traced = tracing.active()
    if device is None and not traced:  # the common case: no device switch, no span
        # current_device(), without its call where this thread's device is known
        where = getattr(_device_thread, "device", None)
        if where is None:
            where = current_device()
        status = malloc_ex(ptr_ref, size, tag_id, generation_ref)
    else:
        with _THIS_DEVICE if device is None else _on_device(device):
            where = current_device() if device is None else device
            call = functools.partial(malloc_ex, ptr_ref, size, tag_id, generation_ref)
            if traced:
                status = tracing.traced("malloc", call, nbytes=nbytes, device=where)
            else:
                status = call()
    if status:
        if status == OutOfMemoryError.code and retry.policy().attempts > 1:
            with _THIS_DEVICE if device is None else _on_device(device):
                again = functools.partial(malloc_ex, ptr_ref, size, tag_id, generation_ref)
                status = retry.retry(again, status, nbytes, where)
        if status:
            _spare.append(args)
            check(status, f"allocating {nbytes} bytes")
    address, gen = ptr.value, generation.value
    _spare.append(args)
    buf = _new_object(DeviceBuffer)
    buf._address = address
    buf._nbytes = nbytes
    buf._generation = gen
    buf._device = where
    buf._tag = tags.UNTAGGED if tag_id == 0 else tags.tag_name(tag_id)
    buf._open = True
    if wipe is not None:
        status = _native.lib().vram_set_allocation_wipe(
            address, gen, _WIPE_ON_FREE if wipe else _WIPE_OFF
        )
        if status:
            buf.close()
            check(status, "setting the wipe policy")
    # leaks.remember's common case, inline: the caller's code and instruction, formatted
    # into file and line only when a leak is reported (to_device records its own caller).
    if leaks._depth == 1:
        frame = _getframe(1)
        _sites[gen] = (frame.f_code, frame.f_lasti)
    else:
        leaks.remember(gen)
    return buf


def to_device(
    data: Any,
    *,
    device: Optional[int] = None,
    tag: Optional[str] = None,
    wipe: Optional[bool] = None,
) -> DeviceBuffer:
    """Allocate a buffer the size of host buffer ``data`` and copy ``data`` into it."""
    with _hostbuf.borrowed(data, writable=False) as (_, nbytes):
        pass
    buf = alloc(nbytes, device=device, tag=tag, wipe=wipe)
    leaks.remember(buf.generation)  # made for to_device's caller, not for to_device
    try:
        buf.copy_from(data)
    except BaseException:
        buf.close()
        raise
    return buf
