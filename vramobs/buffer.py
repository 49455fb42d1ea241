"""DeviceBuffer: an owned allocation of device memory.

A buffer frees exactly its own allocation, once: it remembers the allocation's generation
and frees through ``vram_free_ex``, so a buffer closed after its address was freed elsewhere
and handed to a new allocation cannot free the newcomer. It is freed on ``close()``, at the
end of a ``with`` block, or when garbage-collected (then it is counted as leaked and a
ResourceWarning names the code that allocated it).
"""

from __future__ import annotations

import ctypes
import warnings
import weakref
from typing import Any, Optional

from . import _hostbuf, _native, leaks, tags
from .device import _on_device
from .errors import DeviceFailedError, InvalidArgumentError, OutOfBoundsError, check
from .tracing import traced

__all__ = ["DeviceBuffer", "alloc", "to_device"]


class _Allocation:
    """What the finalizer needs, held apart from the buffer so it keeps no reference to it."""

    __slots__ = ("address", "nbytes", "generation", "device")

    def __init__(self, address: int, nbytes: int, generation: int, device: int) -> None:
        self.address = address
        self.nbytes = nbytes
        self.generation = generation
        self.device = device


def _free(allocation: _Allocation) -> int:
    lib = _native.lib()
    return traced(
        "free",
        lambda: lib.vram_free_ex(allocation.address, allocation.generation),
        nbytes=allocation.nbytes,
        device=allocation.device,
    )


def _collected(allocation: _Allocation) -> None:
    """The finalizer of a buffer garbage-collected while open: free it, count it, say where
    it came from."""
    _free(allocation)
    site = leaks.collected(allocation.generation, allocation.device, allocation.nbytes)
    warnings.warn(
        f"DeviceBuffer of {allocation.nbytes} bytes on device {allocation.device} was "
        f"garbage-collected without close(); allocated at {site}",
        ResourceWarning,
        stacklevel=2,
    )


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

    __slots__ = ("_allocation", "_finalizer", "_device", "_tag", "__weakref__")

    def __new__(cls, *args: Any, **kwargs: Any) -> DeviceBuffer:
        raise TypeError("DeviceBuffer objects are made by vramobs.alloc() or vramobs.to_device()")

    @classmethod
    def _adopt(cls, address: int, nbytes: int, generation: int, device: int, tag: str) -> DeviceBuffer:
        self = object.__new__(cls)
        self._allocation = _Allocation(address, nbytes, generation, device)
        self._device = device
        self._tag = tag
        self._finalizer = weakref.finalize(self, _collected, self._allocation)
        # Buffers alive at exit (model weights) go with the process: no warning, no free.
        self._finalizer.atexit = False
        return self

    # -- identity ----------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Size in bytes, as asked for."""
        return self._allocation.nbytes

    def __len__(self) -> int:
        return self._allocation.nbytes

    @property
    def ptr(self) -> int:
        """The device address. Raises ValueError once closed."""
        self._check_open()
        return self._allocation.address

    @property
    def device(self) -> int:
        return self._device

    @property
    def tag(self) -> str:
        return self._tag

    @property
    def generation(self) -> int:
        """A number unique to this allocation for the life of the process."""
        return self._allocation.generation

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"device={self._device}"
        return f"<DeviceBuffer {self.nbytes} bytes, {state}, tag={self._tag!r}>"

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the device memory. Idempotent. If the driver fails to free it, raises and the
        buffer stays open (close again to retry); if its device failed, the memory is lost
        with the device: the buffer closes and DeviceFailedError is raised."""
        if self._finalizer.alive:
            status = _free(self._allocation)
            if status in (0, DeviceFailedError.code):
                self._finalizer.detach()
                leaks.forget(self._allocation.generation)
            check(status, f"freeing {self.nbytes} bytes")

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise ValueError("operation on a closed DeviceBuffer")

    # -- copies ------------------------------------------------------------------------------

    def _span(self, offset: int, nbytes: int) -> int:
        """Check [offset, offset + nbytes) against the buffer in Python, before C is called."""
        self._check_open()
        _nonnegative("offset", offset)
        if offset + nbytes > self.nbytes:
            raise OutOfBoundsError(
                f"{nbytes} bytes at offset {offset} run past the end of a {self.nbytes}-byte buffer",
                reason="out_of_bounds",
            )
        return self._allocation.address + offset

    def copy_from(self, src: Any, offset: int = 0) -> None:
        """Copy all of host buffer ``src`` into this buffer, starting at ``offset``."""
        with _hostbuf.borrowed(src, writable=False) as (host, nbytes):
            dst = self._span(offset, nbytes)
            lib = _native.lib()
            status = traced(
                "memcpy_h2d", lambda: lib.vram_memcpy_h2d(dst, host, nbytes),
                nbytes=nbytes, device=self._device,
            )
            check(status, f"copy of {nbytes} bytes")

    def copy_to(self, dst: Any, offset: int = 0) -> None:
        """Fill all of writable host buffer ``dst`` from this buffer, starting at ``offset``."""
        with _hostbuf.borrowed(dst, writable=True) as (host, nbytes):
            src = self._span(offset, nbytes)
            lib = _native.lib()
            status = traced(
                "memcpy_d2h", lambda: lib.vram_memcpy_d2h(host, src, nbytes),
                nbytes=nbytes, device=self._device,
            )
            check(status, f"copy of {nbytes} bytes")

    def to_bytes(self, offset: int = 0, nbytes: Optional[int] = None) -> bytes:
        """Read ``nbytes`` (default: to the end) starting at ``offset`` into new bytes."""
        _nonnegative("offset", offset)
        count = self.nbytes - offset if nbytes is None else _nonnegative("nbytes", nbytes)
        if count == 0 and offset <= self.nbytes:
            self._check_open()
            return b""
        out = bytearray(max(count, 0))
        self.copy_to(out, offset)
        return bytes(out)

    # -- interoperability --------------------------------------------------------------------

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": (self.nbytes,),
            "typestr": "|u1",
            "data": (self.ptr, False),
            "version": 3,
            "strides": None,
            # Copies through vramobs are synchronous: a consumer need not synchronize.
            "stream": None,
        }


def alloc(nbytes: int, *, device: Optional[int] = None, tag: Optional[str] = None) -> DeviceBuffer:
    """Allocate ``nbytes`` of device memory (on this thread's device unless ``device`` is given).

    ``tag`` names the owner (``"weights"``, ``"kv_cache"``, ...) from a small declared set.
    Raises OutOfMemoryError, InvalidArgumentError, NoDeviceError or DeviceFailedError.
    """
    if not isinstance(nbytes, int) or isinstance(nbytes, bool):
        raise InvalidArgumentError(f"nbytes must be an int, got {nbytes!r}")
    if not 0 <= nbytes < 1 << 64:
        raise InvalidArgumentError(f"nbytes must be in [1, 2**64), got {nbytes}")
    tag_id = tags.tag_id(tag)
    ptr = ctypes.c_void_p()
    generation = ctypes.c_uint64()
    lib = _native.lib()
    with _on_device(device):
        where = device if device is not None else _current(lib)
        status = traced(
            "malloc",
            lambda: lib.vram_malloc_ex(ctypes.byref(ptr), nbytes, tag_id, ctypes.byref(generation)),
            nbytes=nbytes,
            device=where,
        )
        check(status, f"allocating {nbytes} bytes")
    leaks.remember(generation.value)
    return DeviceBuffer._adopt(ptr.value, nbytes, generation.value, where, tags.tag_name(tag_id))


def _current(lib: ctypes.CDLL) -> int:
    value = ctypes.c_int()
    lib.vram_get_device(ctypes.byref(value))
    return value.value


def to_device(data: Any, *, device: Optional[int] = None, tag: Optional[str] = None) -> DeviceBuffer:
    """Allocate a buffer the size of host buffer ``data`` and copy ``data`` into it."""
    with _hostbuf.borrowed(data, writable=False) as (_, nbytes):
        pass
    buf = alloc(nbytes, device=device, tag=tag)
    try:
        buf.copy_from(data)
    except BaseException:
        buf.close()
        raise
    return buf
