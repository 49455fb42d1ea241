"""vramobs: safe, observable GPU memory operations.

``import vramobs`` touches no GPU and loads nothing native; the first operation loads
libvram_ops, and the first device operation loads the NVIDIA driver (or the host backend,
when ``VRAMOBS_BACKEND=host`` or :func:`use_backend` selects it).
"""

from importlib import metadata as _metadata

from ._native import NativeLibraryError, native_available
from .buffer import DeviceBuffer, alloc, set_wipe_on_free, to_device, wipe_on_free
from .device import (
    DeviceInfo,
    DeviceState,
    MemInfo,
    backend,
    backend_diagnostic,
    current_device,
    device_count,
    device_info,
    device_state,
    get_info,
    set_device,
    usable_devices,
    use_backend,
)
from .errors import (
    BusyError,
    CopyError,
    DeviceFailedError,
    DriverError,
    InteriorPointerError,
    InvalidArgumentError,
    NoDeviceError,
    OutOfBoundsError,
    OutOfMemoryError,
    UnknownPointerError,
    VramError,
)

try:
    __version__ = _metadata.version("vramobs")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = (
    "BusyError",
    "CopyError",
    "DeviceBuffer",
    "DeviceFailedError",
    "DeviceInfo",
    "DeviceState",
    "DriverError",
    "InteriorPointerError",
    "InvalidArgumentError",
    "MemInfo",
    "NativeLibraryError",
    "NoDeviceError",
    "OutOfBoundsError",
    "OutOfMemoryError",
    "UnknownPointerError",
    "VramError",
    "__version__",
    "alloc",
    "backend",
    "backend_diagnostic",
    "current_device",
    "device_count",
    "device_info",
    "device_state",
    "get_info",
    "native_available",
    "set_device",
    "set_wipe_on_free",
    "to_device",
    "usable_devices",
    "use_backend",
    "wipe_on_free",
)
