"""Snapshots of the aggregates that libvram_ops keeps in C.

Every operation is timed and counted in C with atomic adds (no Python on the hot path);
these functions copy the counters out, for tests, tools and the metrics exporter.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

from . import _native, tags
from .errors import InvalidArgumentError, check

__all__ = [
    "Histogram",
    "OpStats",
    "RegistryStats",
    "LiveAllocation",
    "op_stats",
    "registry_stats",
    "live_allocations",
]

_LATENCY, _SIZE, _BANDWIDTH = 0, 1, 2


@dataclass(frozen=True)
class Histogram:
    """Per-bucket (not cumulative) counts; ``bounds[i]`` is bucket i's upper bound, the
    last one infinite. Units: seconds, bytes or bytes per second."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float  # sum of observations

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class OpStats:
    op: str
    calls: int
    by_status: dict[str, int]  # status name -> calls
    refused: dict[str, int]  # reason -> calls refused before the driver
    latency_ok: Histogram  # seconds
    latency_error: Histogram  # seconds
    bytes_ok: int
    size_ok: Histogram  # bytes per successful call
    bandwidth_ok: Histogram  # bytes per second per successful copy


@dataclass(frozen=True)
class RegistryStats:
    live_count: int
    live_bytes: int
    live_rounded_bytes: int
    peak_bytes: int
    allocs_total: int
    frees_total: int
    repeated_frees_total: int
    lost_total: int
    stale_evicted_total: int
    oldest_age_seconds: Optional[float]
    by_tag: dict[str, tuple[int, int]]  # tag -> (live allocations, live bytes), non-empty only


@dataclass(frozen=True)
class LiveAllocation:
    address: int
    nbytes: int
    generation: int
    age_seconds: float
    device: int
    tag: str


def _device(device: int) -> int:
    if not isinstance(device, int) or isinstance(device, bool) or not -1 <= device < _native.MAX_DEVICES:
        raise InvalidArgumentError(
            f"device must be -1 (all) or an int in [0, {_native.MAX_DEVICES}), got {device!r}",
            reason="invalid_device",
        )
    return device


def _bounds(kind: int, n: int, scale: float) -> tuple[float, ...]:
    lib = _native.lib()
    return tuple(float("inf") if i == n - 1 else lib.vram_histogram_bound(kind, i) / scale for i in range(n))


def _names(fn, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [fn(i).decode() for i in range(n)]


def op_stats(device: int = -1) -> dict[str, OpStats]:
    """Per-operation aggregates of one device, or of all with ``device=-1``."""
    lib = _native.lib()
    snap = _native.Stats()
    check(lib.vram_stats_get(_device(device), ctypes.byref(snap), ctypes.sizeof(snap)))
    statuses = _names(lib.vram_status_name, _native.STATUS_CAPACITY)
    reasons = _names(lib.vram_reason_name, _native.REASON_CAPACITY)
    latency = _bounds(_LATENCY, _native.LATENCY_BUCKETS, 1e9)
    size = _bounds(_SIZE, _native.SIZE_BUCKETS, 1.0)
    bandwidth = _bounds(_BANDWIDTH, _native.BANDWIDTH_BUCKETS, 1.0)
    result = {}
    for i in range(snap.op_count):
        s = snap.ops[i]
        op = lib.vram_op_name(i).decode()
        result[op] = OpStats(
            op=op,
            calls=s.calls,
            by_status={statuses[c]: n for c, n in enumerate(s.by_status) if n},
            refused={reasons[r]: n for r, n in enumerate(s.refused_by_reason) if n},
            latency_ok=Histogram(latency, tuple(s.latency_ok), s.latency_ok_sum_ns / 1e9),
            latency_error=Histogram(latency, tuple(s.latency_error), s.latency_error_sum_ns / 1e9),
            bytes_ok=s.bytes_ok,
            size_ok=Histogram(size, tuple(s.size_ok), float(s.bytes_ok)),
            bandwidth_ok=Histogram(bandwidth, tuple(s.bandwidth_ok), float(s.bandwidth_ok_sum)),
        )
    return result


def registry_stats(device: int = -1) -> RegistryStats:
    """Live allocations, bytes and lifetime totals of one device, or of all with -1."""
    lib = _native.lib()
    snap = _native.RegistryStats()
    check(lib.vram_registry_stats_get(_device(device), ctypes.byref(snap), ctypes.sizeof(snap)))
    now = lib.vram_now_ns()
    return RegistryStats(
        live_count=snap.live_count,
        live_bytes=snap.live_bytes,
        live_rounded_bytes=snap.live_rounded_bytes,
        peak_bytes=snap.peak_bytes,
        allocs_total=snap.allocs_total,
        frees_total=snap.frees_total,
        repeated_frees_total=snap.repeated_frees_total,
        lost_total=snap.lost_total,
        stale_evicted_total=snap.stale_evicted_total,
        oldest_age_seconds=(now - snap.oldest_alloc_ns) / 1e9 if snap.oldest_alloc_ns else None,
        by_tag={
            tags.tag_name(t): (snap.tag_live_count[t], snap.tag_live_bytes[t])
            for t in range(_native.MAX_TAGS)
            if snap.tag_live_count[t]
        },
    )


def live_allocations(device: int = -1, limit: Optional[int] = None) -> list[LiveAllocation]:
    """Live allocations, oldest first (at most ``limit``)."""
    lib = _native.lib()
    count = ctypes.c_size_t()
    check(lib.vram_registry_list(_device(device), None, 0, ctypes.byref(count)))
    # Allocations may appear between the two calls: ask with room to spare, report what fits.
    capacity = count.value + 64 if limit is None else limit
    records = (_native.AllocRecord * capacity)()
    check(lib.vram_registry_list(device, records, capacity, ctypes.byref(count)))
    now = lib.vram_now_ns()
    return [
        LiveAllocation(
            address=r.address,
            nbytes=r.bytes,
            generation=r.generation,
            age_seconds=(now - r.alloc_ns) / 1e9,
            device=r.device,
            tag=tags.tag_name(r.tag),
        )
        for r in records[: min(capacity, count.value)]
    ]
