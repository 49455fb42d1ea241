"""The exceptions vramobs raises: one class per libvram_ops status code, mapped in one place.

Every exception carries the C status ``code``, the refusal ``reason`` (``"out_of_bounds"``,
``"null_pointer"``, ...), the operation and, when a driver call failed, the driver's code and
name. Classes also derive from the matching built-in exception, so ``except MemoryError`` and
``except ValueError`` work as Python programmers expect.
"""

from __future__ import annotations

import ctypes
from typing import NoReturn, Optional

from . import _native

__all__ = [
    "VramError",
    "OutOfMemoryError",
    "InvalidArgumentError",
    "CopyError",
    "NoDeviceError",
    "UnknownPointerError",
    "OutOfBoundsError",
    "InteriorPointerError",
    "DeviceFailedError",
    "DriverError",
    "BusyError",
    "check",
    "raise_for",
]


class VramError(Exception):
    """A vram operation failed. Subclasses name the failure; ``code`` is the C status."""

    code: int = -1

    def __init__(
        self,
        message: str,
        *,
        reason: str = "none",
        op: Optional[str] = None,
        driver_error: int = 0,
        driver_error_name: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.op = op
        self.driver_error = driver_error
        self.driver_error_name = driver_error_name


class OutOfMemoryError(VramError, MemoryError):
    """The device could not provide the memory (status 1). Not sticky: retrying may work."""

    code = 1


class InvalidArgumentError(VramError, ValueError):
    """Null pointer, zero size, overflow, or another invalid parameter (status 2)."""

    code = 2


class CopyError(VramError):
    """The driver failed a copy (status 3)."""

    code = 3


class NoDeviceError(VramError, RuntimeError):
    """No usable CUDA driver or device (status 4)."""

    code = 4


class UnknownPointerError(VramError, ValueError):
    """The pointer is not a live allocation made by vramobs (status 5)."""

    code = 5


class OutOfBoundsError(VramError, IndexError):
    """The range runs past the end of its allocation or host buffer (status 6)."""

    code = 6


class InteriorPointerError(VramError, ValueError):
    """The pointer lies inside an allocation, not at its start (status 7)."""

    code = 7


class DeviceFailedError(VramError, RuntimeError):
    """The device failed with a sticky error; only a new process can use it (status 8)."""

    code = 8


class DriverError(VramError, RuntimeError):
    """A driver call failed (status 9)."""

    code = 9


class BusyError(VramError, RuntimeError):
    """The change is not allowed while allocations are live (status 10)."""

    code = 10


_BY_CODE: dict[int, type[VramError]] = {
    cls.code: cls
    for cls in (
        OutOfMemoryError,
        InvalidArgumentError,
        CopyError,
        NoDeviceError,
        UnknownPointerError,
        OutOfBoundsError,
        InteriorPointerError,
        DeviceFailedError,
        DriverError,
        BusyError,
    )
}


def raise_for(status: int, detail: str = "") -> NoReturn:
    """Raise the exception for a failed status, with this thread's last-error details."""
    lib = _native.lib()
    info = _native.ErrorInfo()
    lib.vram_last_error(ctypes.byref(info))
    matches = info.status == status
    reason = lib.vram_reason_name(info.reason).decode() if matches else "none"
    op = lib.vram_op_name(info.op).decode() if matches and info.op >= 0 else None
    driver_error = info.driver_error if matches else 0
    driver_name = lib.vram_driver_error_name(driver_error).decode() if driver_error else None
    parts = [f"{lib.vram_status_name(status).decode()}: {lib.vram_strerror(status).decode()}"]
    if reason != "none":
        parts.append(f"reason: {reason.replace('_', ' ')}")
    if driver_name:
        parts.append(f"driver: {driver_name} ({driver_error})")
    if status == NoDeviceError.code:
        diagnostic = lib.vram_backend_diagnostic().decode()
        if diagnostic:
            parts.append(diagnostic)
    if detail:
        parts.append(detail)
    cls = _BY_CODE.get(status, VramError)
    exc = cls(
        "; ".join(parts),
        reason=reason,
        op=op,
        driver_error=driver_error,
        driver_error_name=driver_name,
    )
    if cls is VramError:
        exc.code = status
    raise exc


def check(status: int, detail: str = "") -> None:
    """Raise for any status but success."""
    if status != 0:
        raise_for(status, detail)
