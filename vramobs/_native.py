"""Loading libvram_ops and declaring its C ABI for ctypes.

The structures below mirror ``native/include/vram_ops.h`` field for field; the sizes the
library reports (``struct_size``) are checked against them when the library loads, so a
header/library mismatch is an error rather than corrupted numbers.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from importlib import metadata, resources
from pathlib import Path
from typing import Optional

__all__ = ["NativeLibraryError", "lib", "native_available", "library_path"]

_LIBRARY_ENV = "VRAMOBS_LIBRARY"
_LIBRARY_NAME = {"win32": "vram_ops.dll", "darwin": "libvram_ops.dylib"}.get(
    sys.platform, "libvram_ops.so"
)

# Fixed capacities of the ABI (vram_ops.h).
MAX_DEVICES = 32
MAX_TAGS = 64
OP_CAPACITY = 16
STATUS_CAPACITY = 16
REASON_CAPACITY = 16
LATENCY_BUCKETS = 28
SIZE_BUCKETS = 20
BANDWIDTH_BUCKETS = 24


class NativeLibraryError(ImportError):
    """libvram_ops could not be loaded, or does not match this Python package."""


class ErrorInfo(ctypes.Structure):
    _fields_ = [
        ("status", ctypes.c_int32),
        ("reason", ctypes.c_int32),
        ("op", ctypes.c_int32),
        ("driver_error", ctypes.c_int32),
    ]


class DeviceProps(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 128),
        ("uuid", ctypes.c_char * 64),
        ("pci_bus_id", ctypes.c_char * 32),
        ("total_bytes", ctypes.c_uint64),
        ("compute_capability_major", ctypes.c_int32),
        ("compute_capability_minor", ctypes.c_int32),
        ("driver_version", ctypes.c_int32),
        ("ordinal", ctypes.c_int32),
    ]


class OpStats(ctypes.Structure):
    _fields_ = [
        ("calls", ctypes.c_uint64),
        ("by_status", ctypes.c_uint64 * STATUS_CAPACITY),
        ("refused_by_reason", ctypes.c_uint64 * REASON_CAPACITY),
        ("latency_ok", ctypes.c_uint64 * LATENCY_BUCKETS),
        ("latency_error", ctypes.c_uint64 * LATENCY_BUCKETS),
        ("latency_ok_sum_ns", ctypes.c_uint64),
        ("latency_error_sum_ns", ctypes.c_uint64),
        ("bytes_ok", ctypes.c_uint64),
        ("size_ok", ctypes.c_uint64 * SIZE_BUCKETS),
        ("bandwidth_ok", ctypes.c_uint64 * BANDWIDTH_BUCKETS),
        ("bandwidth_ok_sum", ctypes.c_uint64),
    ]


class Stats(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("op_count", ctypes.c_uint32),
        ("ops", OpStats * OP_CAPACITY),
    ]


class RegistryStats(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("reserved_", ctypes.c_uint32),
        ("live_count", ctypes.c_uint64),
        ("live_bytes", ctypes.c_uint64),
        ("live_rounded_bytes", ctypes.c_uint64),
        ("peak_bytes", ctypes.c_uint64),
        ("allocs_total", ctypes.c_uint64),
        ("frees_total", ctypes.c_uint64),
        ("repeated_frees_total", ctypes.c_uint64),
        ("lost_total", ctypes.c_uint64),
        ("stale_evicted_total", ctypes.c_uint64),
        ("oldest_alloc_ns", ctypes.c_uint64),
        ("tag_live_count", ctypes.c_uint64 * MAX_TAGS),
        ("tag_live_bytes", ctypes.c_uint64 * MAX_TAGS),
    ]


class AllocRecord(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),
        ("alloc_ns", ctypes.c_uint64),
        ("device", ctypes.c_int32),
        ("tag", ctypes.c_uint32),
    ]


class PoolStats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("enabled", ctypes.c_uint32)] + [
        (name, ctypes.c_uint64)
        for name in (
            "max_cached_bytes",
            "cached_bytes",
            "cached_blocks",
            "hits_total",
            "misses_total",
            "released_bytes_total",
            "live_blocks",
            "slack_bytes",
            "oom_retries_total",
            "oom_give_ups_total",
            "dropped_bytes_total",
        )
    ]


class StagingConfig(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("threads", ctypes.c_uint32),
        ("chunk_bytes", ctypes.c_uint64),
        ("min_bytes", ctypes.c_uint64),
        ("buffers", ctypes.c_uint32),
        ("reserved_", ctypes.c_uint32),
    ]


class HostStats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved_", ctypes.c_uint32)] + [
        (name, ctypes.c_uint64)
        for name in (
            "live_count",
            "live_bytes",
            "cached_bytes",
            "registered_count",
            "registered_bytes",
            "staging_bytes",
            "staged_copies_total",
            "staging_cleared_bytes_total",
        )
    ]


class AsyncStats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved_", ctypes.c_uint32)] + [
        (name, ctypes.c_uint64)
        for name in (
            "pending",
            "enqueued_total",
            "immediate_total",
            "completed_total",
            "failed_total",
            "drained_total",
        )
    ]


_P = ctypes.POINTER
_INT, _VOIDP, _SIZE, _U32, _U64 = (
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_uint32,
    ctypes.c_uint64,
)

_STREAM = ctypes.c_size_t  # uintptr_t: a CUstream handle as an integer

# Every function's argtypes and restype: ctypes' default int restype would truncate pointers.
_SIGNATURES: dict[str, tuple[list, object]] = {
    "vram_version_number": ([], ctypes.c_uint),
    "vram_version_string": ([], ctypes.c_char_p),
    "vram_status_name": ([_INT], ctypes.c_char_p),
    "vram_strerror": ([_INT], ctypes.c_char_p),
    "vram_reason_name": ([_INT], ctypes.c_char_p),
    "vram_op_name": ([_INT], ctypes.c_char_p),
    "vram_malloc": ([_P(_VOIDP), _SIZE], _INT),
    "vram_free": ([_VOIDP], _INT),
    "vram_memcpy_h2d": ([_VOIDP, _VOIDP, _SIZE], _INT),
    "vram_memcpy_d2h": ([_VOIDP, _VOIDP, _SIZE], _INT),
    "vram_get_info": ([_P(_SIZE), _P(_SIZE)], _INT),
    "vram_malloc_ex": ([_P(_VOIDP), _SIZE, _U32, _P(_U64)], _INT),
    "vram_free_ex": ([_VOIDP, _U64], _INT),
    "vram_device_count": ([_P(_INT)], _INT),
    "vram_set_device": ([_INT], _INT),
    "vram_get_device": ([_P(_INT)], _INT),
    "vram_device_state_get": ([_INT, _P(_INT)], _INT),
    "vram_device_props_get": ([_INT, _P(DeviceProps)], _INT),
    "vram_select_backend": ([ctypes.c_char_p], _INT),
    "vram_backend_name": ([], ctypes.c_char_p),
    "vram_backend_diagnostic": ([], ctypes.c_char_p),
    "vram_last_error": ([_P(ErrorInfo)], None),
    "vram_driver_error_name": ([_INT], ctypes.c_char_p),
    "vram_histogram_bound": ([_INT, _INT], _U64),
    "vram_stats_get": ([_INT, _P(Stats), _SIZE], _INT),
    "vram_registry_stats_get": ([_INT, _P(RegistryStats), _SIZE], _INT),
    "vram_registry_list": ([_INT, _P(AllocRecord), _SIZE, _P(_SIZE)], _INT),
    "vram_now_ns": ([], _U64),
    "vram_set_wipe_policy": ([_INT], _INT),
    "vram_get_wipe_policy": ([_P(_INT)], _INT),
    "vram_set_allocation_wipe": ([_VOIDP, _U64, _INT], _INT),
    "vram_pool_set": ([_INT, _U64], _INT),
    "vram_pool_trim": ([_INT, _U64], _INT),
    "vram_pool_stats_get": ([_INT, _P(PoolStats), _SIZE], _INT),
    "vram_malloc_batch": ([_P(_VOIDP), _P(_SIZE), _SIZE, _U32, _P(_U64)], _INT),
    "vram_memcpy_d2d": ([_VOIDP, _VOIDP, _SIZE], _INT),
    "vram_copy_path_get": ([_INT, _INT, _P(_INT)], _INT),
    "vram_migrate": ([_VOIDP, _U64, _INT, _P(_VOIDP), _P(_U64)], _INT),
    "vram_staging_get": ([_P(StagingConfig)], _INT),
    "vram_staging_set": ([_P(StagingConfig)], _INT),
    "vram_host_alloc": ([_P(_VOIDP), _SIZE], _INT),
    "vram_host_free": ([_VOIDP], _INT),
    "vram_host_register": ([_VOIDP, _SIZE], _INT),
    "vram_host_unregister": ([_VOIDP], _INT),
    "vram_host_trim": ([_SIZE], _INT),
    "vram_host_stats_get": ([_P(HostStats), _SIZE], _INT),
    "vram_host_numa_node": ([_INT, _P(_INT)], _INT),
    "vram_memcpy_h2d_async": ([_VOIDP, _VOIDP, _SIZE, _STREAM, _P(_VOIDP)], _INT),
    "vram_memcpy_d2h_async": ([_VOIDP, _VOIDP, _SIZE, _STREAM, _P(_VOIDP)], _INT),
    "vram_memcpy_d2d_async": ([_VOIDP, _VOIDP, _SIZE, _STREAM, _P(_VOIDP)], _INT),
    "vram_completion_query": ([_VOIDP, _P(_INT)], _INT),
    "vram_completion_wait": ([_VOIDP], _INT),
    "vram_completion_release": ([_VOIDP], _INT),
    "vram_malloc_async": ([_P(_VOIDP), _SIZE, _U32, _P(_U64), _STREAM], _INT),
    "vram_free_async": ([_VOIDP, _U64, _STREAM], _INT),
    "vram_async_stats_get": ([_P(AsyncStats), _SIZE], _INT),
}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_path: Optional[Path] = None


def _candidates() -> list[Path]:
    override = os.environ.get(_LIBRARY_ENV)
    if override:
        return [Path(override)]
    return [Path(str(resources.files("vramobs").joinpath(_LIBRARY_NAME)))]


def _package_version() -> Optional[str]:
    try:
        return metadata.version("vramobs")
    except metadata.PackageNotFoundError:  # running from a source tree
        return None


def _load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        try:
            handle = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        try:
            for name, (argtypes, restype) in _SIGNATURES.items():
                fn = getattr(handle, name)
                fn.argtypes = argtypes
                fn.restype = restype
        except AttributeError as exc:
            raise NativeLibraryError(
                f"{path} lacks a vram_ops function ({exc}); it is not this version of libvram_ops"
            ) from exc
        _check_version(handle, path)
        global _path
        _path = path
        return handle
    raise NativeLibraryError(
        "cannot load libvram_ops; tried: "
        + "; ".join(tried)
        + " (install vramobs with pip, not from a source checkout on sys.path, or set"
        + f" {_LIBRARY_ENV} to the library's path)"
    )


def _check_version(handle: ctypes.CDLL, path: Path) -> None:
    found = handle.vram_version_string().decode()
    expected = _package_version()
    if expected is not None and found != expected:
        raise NativeLibraryError(
            f"{path} is libvram_ops {found}, but the vramobs package is {expected}"
        )
    probe = Stats()
    if handle.vram_stats_get(-1, ctypes.byref(probe), ctypes.sizeof(probe)) != 0 or (
        probe.struct_size != ctypes.sizeof(Stats)
    ):
        raise NativeLibraryError(
            f"{path}: vram_stats layout differs from this package's (library {found})"
        )


def lib() -> ctypes.CDLL:
    """The loaded library, loading it on first use. Raises NativeLibraryError."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = _load()
    return _lib


def library_path() -> Optional[Path]:
    """Where libvram_ops was loaded from, or None before it is loaded."""
    return _path


def native_available() -> bool:
    """Whether libvram_ops loads (touches no GPU)."""
    try:
        lib()
    except NativeLibraryError:
        return False
    return True
