"""The five operations of the specification as thin calls that return the C status code.

For callers who want the C contract itself: no exceptions for failed operations, addresses
as integers. Arguments that no C type can hold (negative or wider than 64 bits) raise
InvalidArgumentError, since they cannot be passed at all. Most code should use
:func:`vramobs.alloc` and :class:`vramobs.DeviceBuffer` instead.
"""

from __future__ import annotations

import ctypes

from . import _native
from .errors import InvalidArgumentError

__all__ = ["malloc", "free", "memcpy_h2d", "memcpy_d2h", "get_info"]

_WORD = 1 << 64


def _word(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _WORD:
        raise InvalidArgumentError(
            f"{name} must be an int in [0, 2**64), got {value!r}", reason="out_of_range"
        )
    return value


def malloc(nbytes: int) -> tuple[int, int]:
    """``vram_malloc``: returns ``(status, address)``; address is 0 on failure."""
    ptr = ctypes.c_void_p()
    status = _native.lib().vram_malloc(ctypes.byref(ptr), _word("nbytes", nbytes))
    return status, ptr.value or 0


def free(address: int) -> int:
    """``vram_free``: returns the status. 0 (NULL) is a no-op."""
    return _native.lib().vram_free(_word("address", address))


def memcpy_h2d(dst: int, src: int, nbytes: int) -> int:
    """``vram_memcpy_h2d`` from host address ``src`` to device address ``dst``."""
    return _native.lib().vram_memcpy_h2d(
        _word("dst", dst), _word("src", src), _word("nbytes", nbytes)
    )


def memcpy_d2h(dst: int, src: int, nbytes: int) -> int:
    """``vram_memcpy_d2h`` from device address ``src`` to host address ``dst``."""
    return _native.lib().vram_memcpy_d2h(
        _word("dst", dst), _word("src", src), _word("nbytes", nbytes)
    )


def get_info() -> tuple[int, int, int]:
    """``vram_get_info``: returns ``(status, free_bytes, total_bytes)``."""
    free_bytes, total_bytes = ctypes.c_size_t(), ctypes.c_size_t()
    status = _native.lib().vram_get_info(ctypes.byref(free_bytes), ctypes.byref(total_bytes))
    return status, free_bytes.value, total_bytes.value
