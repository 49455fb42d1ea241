"""vramobs: safe, observable GPU memory operations.

``import vramobs`` touches no GPU and loads nothing native; the first operation loads
libvram_ops, and the first device operation loads the NVIDIA driver (or the host backend,
when ``VRAMOBS_BACKEND=host`` or :func:`use_backend` selects it).
"""

from importlib import metadata as _metadata

from ._native import NativeLibraryError, native_available
from .buffer import DeviceBuffer, alloc, copy_path, set_wipe_on_free, to_device, wipe_on_free
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
from .pinned import (
    HostRegistration,
    PinnedBuffer,
    configure_staging,
    host_numa_node,
    host_stats,
    pinned_empty,
    register_host,
    staging_config,
    trim_pinned,
)
from .pool import PoolStats, disable_pool, empty_batch, enable_pool, pool_stats, trim_pool
from .streams import AsyncStats, Completion, alloc_async, async_stats, stream_handle

try:
    __version__ = _metadata.version("vramobs")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = (
    "AsyncStats",
    "BusyError",
    "Completion",
    "CopyError",
    "DeviceBuffer",
    "DeviceFailedError",
    "DeviceInfo",
    "DeviceState",
    "DriverError",
    "HostRegistration",
    "InteriorPointerError",
    "InvalidArgumentError",
    "MemInfo",
    "NativeLibraryError",
    "NoDeviceError",
    "OutOfBoundsError",
    "OutOfMemoryError",
    "PinnedBuffer",
    "PoolStats",
    "UnknownPointerError",
    "VramError",
    "__version__",
    "alloc",
    "alloc_async",
    "async_stats",
    "backend",
    "backend_diagnostic",
    "configure_staging",
    "copy_path",
    "current_device",
    "device_count",
    "device_info",
    "device_state",
    "disable_pool",
    "empty_batch",
    "enable_pool",
    "get_info",
    "host_numa_node",
    "host_stats",
    "native_available",
    "pinned_empty",
    "pool_stats",
    "register_host",
    "set_device",
    "set_wipe_on_free",
    "staging_config",
    "stream_handle",
    "to_device",
    "trim_pinned",
    "trim_pool",
    "usable_devices",
    "use_backend",
    "wipe_on_free",
)
