"""Borrow the memory of any buffer-protocol object (bytes, bytearray, memoryview, numpy,
array.array, mmap) for the duration of a copy.

The buffer is exported through the buffer protocol and held until the copy returns, so the
object cannot be resized or freed underneath C. Only C-contiguous buffers are accepted.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import InvalidArgumentError

_PyBUF_SIMPLE = 0
_PyBUF_WRITABLE = 0x0001


class _PyBuffer(ctypes.Structure):
    # Py_buffer, part of the stable ABI since Python 3.11 and unchanged since 3.3.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
# ctypes passes a _PyBuffer instance by reference where the argtype is a pointer to it.
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def acquire(obj: object, writable: bool) -> _PyBuffer:
    """Export obj's contiguous memory (``.buf``, ``.len``); pair with :func:`release`."""
    if sys.version_info < (3, 12) and hasattr(type(obj), "__buffer__"):
        # PEP 688 buffers written in Python (PinnedBuffer) export themselves only from 3.12.
        obj = obj.__buffer__(_PyBUF_WRITABLE if writable else _PyBUF_SIMPLE)  # type: ignore[attr-defined]
    view = _PyBuffer()
    try:
        _get_buffer(obj, view, _PyBUF_WRITABLE if writable else _PyBUF_SIMPLE)
    except (BufferError, TypeError, ValueError) as exc:
        need = "a writable, C-contiguous" if writable else "a C-contiguous"
        raise InvalidArgumentError(
            f"host buffer must be {need} buffer-protocol object, got {type(obj).__name__}: {exc}",
            reason="host_buffer",
        ) from exc
    return view


def release(view: _PyBuffer) -> None:
    _release_buffer(view)


@contextmanager
def borrowed(obj: object, *, writable: bool) -> Iterator[tuple[int, int]]:
    """Yield ``(address, nbytes)`` of obj's contiguous memory while it stays exported."""
    view = acquire(obj, writable)
    try:
        yield view.buf or 0, view.len
    finally:
        release(view)
