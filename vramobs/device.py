"""Devices, backends and memory information."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Optional

from . import _native, tracing
from .errors import InvalidArgumentError, check

__all__ = [
    "MemInfo",
    "DeviceInfo",
    "DeviceState",
    "get_info",
    "device_count",
    "device_info",
    "device_state",
    "usable_devices",
    "backend",
    "backend_diagnostic",
    "use_backend",
    "current_device",
    "set_device",
]


class MemInfo(NamedTuple):
    """Free and total device memory in bytes, exactly as the driver reports them."""

    free: int
    total: int

    @property
    def used(self) -> int:
        return self.total - self.free


class DeviceState(IntEnum):
    USABLE = 0
    FAILED = 1  # latched after a sticky error: the process must restart to use it again
    UNAVAILABLE = 2


@dataclass(frozen=True)
class DeviceInfo:
    """What the driver says about a device; ``uuid`` and ``pci_bus_id`` as DCGM labels them."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str
    total_bytes: int
    compute_capability: tuple[int, int]
    driver_version: int


def _device_arg(device: int) -> int:
    if not isinstance(device, int) or isinstance(device, bool) or not 0 <= device < _native.MAX_DEVICES:
        raise InvalidArgumentError(
            f"device must be an int in [0, {_native.MAX_DEVICES}), got {device!r}",
            reason="invalid_device",
        )
    return device


# A mirror of the C library's per-thread device, kept by set_device, so that every
# allocation need not ask C which device it landed on.
_thread = threading.local()


def current_device() -> int:
    """This thread's device for allocations and queries (default 0)."""
    device = getattr(_thread, "device", None)
    if device is None:
        value = ctypes.c_int()
        check(_native.lib().vram_get_device(ctypes.byref(value)))
        device = _thread.device = value.value
    return device


def set_device(device: int) -> None:
    """Choose this thread's device for later allocations and queries."""
    check(_native.lib().vram_set_device(_device_arg(device)), f"device {device}")
    _thread.device = device


class _on_device:
    """Run a block with this thread's device set, then restore it."""

    def __init__(self, device: Optional[int]) -> None:
        self._device = device
        self._previous = 0

    def __enter__(self) -> None:
        if self._device is not None:
            _device_arg(self._device)
            self._previous = current_device()
            if self._device != self._previous:
                set_device(self._device)

    def __exit__(self, *exc: object) -> None:
        if self._device is not None and self._device != self._previous:
            set_device(self._previous)


def get_info(device: Optional[int] = None) -> MemInfo:
    """Free and total memory of a device (this thread's device by default)."""
    free_bytes, total_bytes = ctypes.c_size_t(), ctypes.c_size_t()
    lib = _native.lib()
    with _on_device(device):
        args = (ctypes.byref(free_bytes), ctypes.byref(total_bytes))
        if tracing.active():
            status = tracing.traced(
                "get_info",
                lambda: lib.vram_get_info(*args),
                nbytes=0,
                device=current_device() if device is None else device,
            )
        else:
            status = lib.vram_get_info(*args)
        check(status)
    return MemInfo(free_bytes.value, total_bytes.value)


def device_count() -> int:
    """How many devices the backend serves. Raises NoDeviceError when there are none."""
    count = ctypes.c_int()
    check(_native.lib().vram_device_count(ctypes.byref(count)))
    return count.value


def device_info(device: int = 0) -> DeviceInfo:
    """Name, UUID, PCI bus id, memory and driver version of a device."""
    props = _native.DeviceProps()
    check(_native.lib().vram_device_props_get(_device_arg(device), ctypes.byref(props)))
    return DeviceInfo(
        index=props.ordinal,
        name=props.name.decode(errors="replace"),
        uuid=props.uuid.decode(errors="replace"),
        pci_bus_id=props.pci_bus_id.decode(errors="replace"),
        total_bytes=props.total_bytes,
        compute_capability=(props.compute_capability_major, props.compute_capability_minor),
        driver_version=props.driver_version,
    )


def device_state(device: int = 0) -> DeviceState:
    """Whether a device is usable, latched failed, or unavailable."""
    state = ctypes.c_int()
    check(_native.lib().vram_device_state_get(_device_arg(device), ctypes.byref(state)))
    return DeviceState(state.value)


def usable_devices() -> list[int]:
    """Indices of the devices that can serve operations now (failed ones excluded)."""
    count = ctypes.c_int()
    if _native.lib().vram_device_count(ctypes.byref(count)) != 0:
        return []
    return [d for d in range(count.value) if device_state(d) is DeviceState.USABLE]


def backend() -> str:
    """The backend serving this process: ``"cuda"`` or ``"host"`` (emulated, no GPU)."""
    return _native.lib().vram_backend_name().decode()


def backend_diagnostic() -> str:
    """Why the backend cannot serve, or ``""`` when it can."""
    return _native.lib().vram_backend_diagnostic().decode()


def use_backend(name: str) -> None:
    """Select ``"cuda"`` or ``"host"`` explicitly. Raises BusyError while allocations live."""
    if not isinstance(name, str) or "\0" in name:
        raise InvalidArgumentError(f"no backend is named {name!r}", reason="invalid_backend")
    check(_native.lib().vram_select_backend(name.encode()), f"backend {name!r}")
