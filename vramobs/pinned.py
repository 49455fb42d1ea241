"""Page-locked (pinned) host memory, registration of a caller's buffers, and the staging
engine that copies pageable host memory at pinned speed.

Copies between a :class:`~vramobs.DeviceBuffer` and pinned memory go straight to the copy
engine. Copies from or to ordinary (pageable) memory of at least ``min_bytes`` go through
page-locked staging buffers that a pool of host threads fills and drains while the copy
engine runs (:func:`configure_staging`). Both are synchronous: done when the call returns.
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from . import _hostbuf, _native
from .errors import InvalidArgumentError, check

__all__ = [
    "HostRegistration",
    "HostStats",
    "PinnedBuffer",
    "StagingConfig",
    "configure_staging",
    "host_numa_node",
    "host_stats",
    "pinned_empty",
    "register_host",
    "staging_config",
    "trim_pinned",
]

# References to a buffer's ctypes array held by the buffer itself and by sys.getrefcount:
# any more are views (memoryview, numpy) that would dangle if the memory were freed.
_OWN_REFERENCES = 2


class _Block:
    """One vram_host_alloc block; frees it when the last reference (the buffer, its array,
    a view of it) goes, or when the buffer is closed."""

    __slots__ = ("address", "nbytes", "freed")

    def __init__(self, address: int, nbytes: int) -> None:
        self.address, self.nbytes, self.freed = address, nbytes, False

    def free(self) -> int:
        if self.freed:
            return 0
        self.freed = True
        return _native.lib().vram_host_free(self.address)

    def __del__(self) -> None:
        if not self.freed and not sys.is_finalizing():
            self.free()
            warnings.warn(
                f"PinnedBuffer of {self.nbytes} bytes was garbage-collected without close()",
                ResourceWarning,
                stacklevel=2,
            )


class PinnedBuffer:
    """Page-locked host memory of ``nbytes`` bytes, made by :func:`pinned_empty`.

    Its bytes are reached through :attr:`view` (a writable ``memoryview``) or
    :meth:`numpy`; on Python 3.12 and later the buffer itself supports the buffer protocol,
    so ``DeviceBuffer.copy_from(buf)`` works as well as ``copy_from(buf.view)``. Views keep
    the memory alive; :meth:`close` refuses (``BufferError``) while any is held.
    """

    __slots__ = ("_block", "_array", "__weakref__")

    def __init__(self, nbytes: int) -> None:
        if type(nbytes) is not int or not 0 < nbytes < 1 << 63:
            raise InvalidArgumentError(f"nbytes must be an int in [1, 2**63), got {nbytes!r}")
        ptr = ctypes.c_void_p()
        check(_native.lib().vram_host_alloc(ctypes.byref(ptr), nbytes), f"pinning {nbytes} bytes")
        self._block = _Block(ptr.value, nbytes)
        array = (ctypes.c_ubyte * nbytes).from_address(ptr.value)
        array._vramobs_block = self._block  # views of the array keep the block alive
        self._array: Optional[ctypes.Array] = array

    @property
    def nbytes(self) -> int:
        return self._block.nbytes

    def __len__(self) -> int:
        return self._block.nbytes

    @property
    def ptr(self) -> int:
        """The host address. Raises ValueError once closed."""
        self._check_open()
        return self._block.address

    @property
    def closed(self) -> bool:
        return self._array is None

    @property
    def view(self) -> memoryview:
        """A writable, 1-D memoryview of unsigned bytes over the whole buffer."""
        return memoryview(self._checked_array()).cast("B")

    def numpy(self, dtype: Any = "u1") -> Any:
        """A numpy array of ``dtype`` over the whole buffer (no copy; needs numpy)."""
        import numpy

        return numpy.frombuffer(self._checked_array(), dtype=dtype)

    def __buffer__(self, flags: int) -> memoryview:  # Python >= 3.12
        return self.view

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()

    def close(self) -> None:
        """Free the memory (back to vramobs' cache of pinned blocks, zeroed). Idempotent.
        Raises BufferError while a view of it is alive."""
        if self._array is None:
            return
        if sys.getrefcount(self._array) > _OWN_REFERENCES:
            raise BufferError("PinnedBuffer still has views (memoryview, numpy); release them first")
        self._array = None
        check(self._block.free(), f"freeing {self._block.nbytes} pinned bytes")

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PinnedBuffer {self.nbytes} bytes{', closed' if self.closed else ''}>"

    def _checked_array(self) -> ctypes.Array:
        self._check_open()
        assert self._array is not None
        return self._array

    def _check_open(self) -> None:
        if self._array is None:
            raise ValueError("operation on a closed PinnedBuffer")


def pinned_empty(nbytes: int) -> PinnedBuffer:
    """Allocate ``nbytes`` of pinned host memory. Its first contents are unspecified, but
    never the bytes of a freed PinnedBuffer: blocks are cleared before they are reused."""
    return PinnedBuffer(nbytes)


def trim_pinned(keep_bytes: int = 0) -> None:
    """Return cached pinned blocks to the driver, keeping at most ``keep_bytes``."""
    if type(keep_bytes) is not int or not 0 <= keep_bytes < 1 << 64:
        raise InvalidArgumentError(f"keep_bytes must be an int in [0, 2**64), got {keep_bytes!r}")
    check(_native.lib().vram_host_trim(keep_bytes), "trimming pinned memory")


class HostRegistration:
    """A caller's buffer page-locked until :meth:`close` (or the end of a ``with`` block).
    Holds the buffer exported meanwhile, so it cannot be resized or freed."""

    __slots__ = ("_view", "_address", "_nbytes", "__weakref__")

    def __init__(self, obj: Any) -> None:
        view = _hostbuf.acquire(obj, False)
        if not view.buf or view.len <= 0:
            _hostbuf.release(view)
            raise InvalidArgumentError("cannot register an empty buffer", reason="zero_size")
        status = _native.lib().vram_host_register(view.buf, view.len)
        if status:
            _hostbuf.release(view)
            check(status, f"registering {view.len} host bytes")
        self._view: Optional[_hostbuf._PyBuffer] = view
        self._address, self._nbytes = view.buf, view.len

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def closed(self) -> bool:
        return self._view is None

    def close(self) -> None:
        """Unregister. Idempotent; if the driver refuses, raises and stays registered."""
        if self._view is None:
            return
        check(_native.lib().vram_host_unregister(self._address), "unregistering host memory")
        view, self._view = self._view, None
        _hostbuf.release(view)

    def __enter__(self) -> HostRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_view", None) is not None and not sys.is_finalizing():
            try:
                self.close()
            except Exception:  # noqa: BLE001 - nowhere to raise from a finalizer
                warnings.warn("host registration could not be undone", ResourceWarning)

    def __repr__(self) -> str:
        return f"<HostRegistration {self._nbytes} bytes{', closed' if self.closed else ''}>"


def register_host(obj: Any) -> HostRegistration:
    """Page-lock the memory of a C-contiguous buffer-protocol object (numpy array, bytearray,
    mmap) so that copies from and to it skip staging. Use as a context manager, or close()."""
    return HostRegistration(obj)


@dataclass(frozen=True)
class StagingConfig:
    threads: int  # host copy threads per device and direction; 0: staging off
    chunk_bytes: int  # bytes per staging buffer
    min_bytes: int  # smaller pageable copies go to the driver directly
    buffers: int  # staging buffers per thread


def staging_config() -> StagingConfig:
    """The staging engine's configuration."""
    raw = _native.StagingConfig()
    check(_native.lib().vram_staging_get(ctypes.byref(raw)))
    return StagingConfig(raw.threads, raw.chunk_bytes, raw.min_bytes, raw.buffers)


def configure_staging(
    *,
    threads: Optional[int] = None,
    chunk_bytes: Optional[int] = None,
    min_bytes: Optional[int] = None,
    buffers: Optional[int] = None,
) -> StagingConfig:
    """Change the given settings (the others stay) for copies that start after the call;
    returns the new configuration. threads 0..64 (0 turns staging off), chunk_bytes
    4 KiB..1 GiB, buffers 1..16. Raises InvalidArgumentError for values out of range."""
    current = staging_config()
    wanted = {
        "threads": current.threads if threads is None else threads,
        "chunk_bytes": current.chunk_bytes if chunk_bytes is None else chunk_bytes,
        "min_bytes": current.min_bytes if min_bytes is None else min_bytes,
        "buffers": current.buffers if buffers is None else buffers,
    }
    limits = {"threads": 32, "chunk_bytes": 64, "min_bytes": 64, "buffers": 32}
    for name, value in wanted.items():
        if type(value) is not int or not 0 <= value < 1 << limits[name]:
            raise InvalidArgumentError(f"{name} must be a non-negative int, got {value!r}",
                                       reason="invalid_config")
    raw = _native.StagingConfig(struct_size=ctypes.sizeof(_native.StagingConfig), **wanted)
    check(_native.lib().vram_staging_set(ctypes.byref(raw)), "configuring staging")
    return staging_config()


@dataclass(frozen=True)
class HostStats:
    live_count: int  # pinned blocks in use
    live_bytes: int  # their page-locked bytes
    cached_bytes: int  # freed blocks kept for reuse
    registered_count: int
    registered_bytes: int
    staging_bytes: int  # page-locked staging buffers
    staged_copies_total: int
    staging_cleared_bytes_total: int  # staging bytes cleared after copies of wiped allocations


def host_stats() -> HostStats:
    """Pinned, registered and staging memory, and staged copies."""
    raw = _native.HostStats()
    check(_native.lib().vram_host_stats_get(ctypes.byref(raw), ctypes.sizeof(raw)))
    return HostStats(*(getattr(raw, name) for name in HostStats.__dataclass_fields__))


def host_numa_node(device: int = 0) -> int:
    """The host NUMA node nearest ``device``, where its staging buffers and threads are
    placed; -1 when the system does not say (then nothing is bound)."""
    node = ctypes.c_int()
    check(_native.lib().vram_host_numa_node(device, ctypes.byref(node)))
    return node.value
