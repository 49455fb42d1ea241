"""The device memory pool and batch allocation.

With the pool on, a closed buffer's device memory stays cached in libvram_ops (per device, by
size class) and the next allocation of its class takes it without a driver call: every
buffer is still a new allocation (new generation, bounds of its own size, counted as the
same operations). Out-of-memory releases the cache and retries once in C, before
:mod:`vramobs.retry` (when configured) runs its hooks. Metrics: ``vramobs_pool_*``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from . import _native, leaks, retry, tags, tracing
from .buffer import _WIPE_OFF, _WIPE_ON_FREE, DeviceBuffer
from .device import _device_arg, _on_device, current_device
from .errors import InvalidArgumentError, OutOfMemoryError, check

__all__ = ["PoolStats", "enable_pool", "disable_pool", "trim_pool", "pool_stats", "empty_batch"]

_U64_LIMIT = 1 << 64


@dataclass(frozen=True)
class PoolStats:
    """One device's pool (or the sum over devices, where ``enabled`` counts those on)."""

    enabled: int
    max_cached_bytes: int
    cached_bytes: int  # device memory held by cached blocks
    cached_blocks: int
    hits_total: int  # allocations served from the cache
    misses_total: int  # allocations that called the driver while the pool was on
    released_bytes_total: int  # returned to the driver by trim, a full cache or out-of-memory
    live_blocks: int  # pool blocks held by live buffers
    slack_bytes: int  # their bytes past what the registry counts (the class rounding)
    oom_retries_total: int  # allocations tried again after releasing the cache
    oom_give_ups_total: int  # of those, the ones still out of memory
    dropped_bytes_total: int  # cached bytes lost with a failed device


def _bytes_arg(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _U64_LIMIT:
        raise InvalidArgumentError(f"{name} must be an int in [0, 2**64), got {value!r}")
    return value


def _this_device(device: Optional[int]) -> int:
    return current_device() if device is None else _device_arg(device)


def enable_pool(max_cached_bytes: int, device: Optional[int] = None) -> None:
    """Cache freed device memory of ``device`` (default: this thread's) for reuse, holding
    at most ``max_cached_bytes``; lowering the bound releases what is over it."""
    where = _this_device(device)
    check(_native.lib().vram_pool_set(where, _bytes_arg("max_cached_bytes", max_cached_bytes)))


def disable_pool(device: Optional[int] = None) -> None:
    """Turn the pool of ``device`` (default: this thread's) off and release its cache."""
    check(_native.lib().vram_pool_set(_this_device(device), 0))


def trim_pool(keep_bytes: int = 0, device: Optional[int] = None) -> None:
    """Return cached blocks to the driver, largest first, keeping at most ``keep_bytes`` per
    device, on ``device`` or, by default, every device."""
    where = -1 if device is None else _device_arg(device)
    check(_native.lib().vram_pool_trim(where, _bytes_arg("keep_bytes", keep_bytes)))


def pool_stats(device: Optional[int] = None) -> PoolStats:
    """The pool of ``device`` (default: this thread's); ``-1`` sums every device."""
    where = -1 if device == -1 else _this_device(device)
    snap = _native.PoolStats()
    check(_native.lib().vram_pool_stats_get(where, ctypes.byref(snap), ctypes.sizeof(snap)))
    return PoolStats(**{name: getattr(snap, name) for name, _ in snap._fields_[1:]})


def empty_batch(
    sizes: Sequence[int],
    *,
    tag: Optional[str] = None,
    device: Optional[int] = None,
    wipe: Optional[bool] = None,
) -> list[DeviceBuffer]:
    """Allocate one buffer per size, all or nothing: on any failure nothing stays allocated
    and the first failure is raised (out-of-memory retried as :mod:`vramobs.retry` says).
    ``tag``, ``device`` and ``wipe`` as for :func:`vramobs.alloc`. Each buffer counts as one
    malloc."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise InvalidArgumentError(f"sizes must be a sequence of ints, got {sizes!r}")
    count = len(sizes)
    for n in sizes:
        _bytes_arg("every size", n)
    tag_id = 0 if tag is None else tags.tag_id(tag)
    ptrs = (ctypes.c_void_p * count)()
    generations = (ctypes.c_uint64 * count)()
    c_sizes = (ctypes.c_size_t * count)(*sizes)
    batch = _native.lib().vram_malloc_batch

    def allocate() -> int:
        return batch(ptrs, c_sizes, count, tag_id, generations)

    with _on_device(device):
        where = current_device() if device is None else device
        if tracing.active():
            status = tracing.traced("malloc_batch", allocate, nbytes=sum(sizes), device=where)
        else:
            status = allocate()
        if status == OutOfMemoryError.code and retry.policy().attempts > 1:
            status = retry.retry(allocate, status, sum(sizes), where)
        if status:
            check(status, f"allocating a batch of {count} buffers")
    name = tags.tag_name(tag_id)
    buffers = [
        DeviceBuffer._adopt(ptrs[i], sizes[i], generations[i], where, name) for i in range(count)
    ]
    if wipe is not None:
        policy = _WIPE_ON_FREE if wipe else _WIPE_OFF
        for buf in buffers:
            status = _native.lib().vram_set_allocation_wipe(buf._address, buf._generation, policy)
            if status:
                for undo in buffers:
                    undo.close()
                check(status, "setting the wipe policy")
    for generation in generations:
        leaks.remember(generation)
    return buffers
