"""The Prometheus collector: reads libvram_ops' aggregates, the registry, CUDA and NVML at
scrape time. Operations update nothing in Python; a scrape never raises.

Metric names, types and labels are documented in ``exporters/METRICS.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Optional

from prometheus_client.core import (
    REGISTRY,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import __version__, _native, device, leaks, pinned, pool, retry, stats, streams, tags
from .errors import VramError
from .nvml import NvmlMemory, NvmlReader

__all__ = ["VramCollector"]

log = logging.getLogger(__name__)

_DEVICE = ["gpu", "UUID"]
_COPY_DIRECTIONS = {
    "memcpy_h2d": "h2d",
    "memcpy_d2h": "d2h",
    "memcpy_d2d": "d2d",
    "memcpy_p2p": "p2p",
    "memcpy_staged": "staged",
}


@dataclass(frozen=True)
class _Device:
    ordinal: int  # vramobs' (CUDA's) device index
    gpu: str  # the label: NVML's index when NVML knows the device, as dcgm-exporter's
    uuid: str
    info: Optional[device.DeviceInfo]
    state: device.DeviceState

    @property
    def labels(self) -> list[str]:
        return [self.gpu, self.uuid]


def _status_label(name: str) -> str:
    """``VRAM_ERR_OUT_OF_BOUNDS`` -> ``out_of_bounds``."""
    return name.removeprefix("VRAM_").removeprefix("ERR_").lower()


def _cumulative(histogram: stats.Histogram) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, count in zip(histogram.bounds, histogram.counts):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


class VramCollector:
    """Publishes vramobs' metrics. Registers itself with ``registry`` unless it is None."""

    def __init__(
        self,
        registry: Optional[CollectorRegistry] = REGISTRY,
        nvml: Optional[NvmlReader] = None,
        max_age: float = 1.0,
    ) -> None:
        """``max_age``: how long a reading of device memory (cudaMemGetInfo and NVML, taken
        together) serves later scrapes, so that scrapes in a burst query the device once."""
        self._nvml = nvml if nvml is not None else NvmlReader(max_age)
        self._max_age = max_age
        self._readings: dict[int, tuple[float, Optional[device.MemInfo], Optional[NvmlMemory]]] = {}
        self._context_bytes: dict[str, int] = {}
        self._calibrate_context()
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not touch the GPU: no names are claimed in advance

    # -- calibration ---------------------------------------------------------------------------

    def _calibrate_context(self) -> None:
        """Measure each device's CUDA context: this process's NVML usage minus what vramobs
        tracks, taken now, when the exporter starts (before the service allocates outside
        vramobs). VRAMOBS_CONTEXT_BYTES overrides the measurement."""
        configured = os.environ.get("VRAMOBS_CONTEXT_BYTES")
        for dev in self._devices():
            if configured is not None:
                self._context_bytes[dev.uuid] = int(configured)
                continue
            if dev.state is not device.DeviceState.USABLE or device.backend() != "cuda":
                continue
            try:
                device.get_info(dev.ordinal)  # the context exists from here on
            except VramError:
                continue
            memory = self._nvml.memory(dev.uuid)
            if memory is not None and memory.process_used is not None:
                tracked = _tracked_bytes(dev.ordinal)
                self._context_bytes[dev.uuid] = max(memory.process_used - tracked, 0)

    # -- collection ----------------------------------------------------------------------------

    def _devices(self) -> list[_Device]:
        try:
            count = device.device_count()
        except (VramError, _native.NativeLibraryError):
            return []
        found = []
        for ordinal in range(count):
            state = device.device_state(ordinal)
            try:
                info: Optional[device.DeviceInfo] = device.device_info(ordinal)
            except VramError:
                info = None
            uuid = info.uuid if info else "unknown"
            memory = self._nvml.memory(uuid) if info and uuid.startswith("GPU-") else None
            gpu = str(memory.index if memory is not None else ordinal)
            found.append(_Device(ordinal, gpu, uuid, info, state))
        return found

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        try:
            yield from self._collect()
        except Exception:  # a scrape never raises: log, publish what was collected
            log.exception("vramobs metrics collection failed")
        duration = GaugeMetricFamily(
            "vramobs_scrape_duration_seconds", "Time this scrape took to collect", unit="seconds"
        )
        duration.add_metric([], time.perf_counter() - start)
        yield duration

    def _collect(self) -> Iterator[Metric]:
        available = _native.native_available()
        build = GaugeMetricFamily(
            "vramobs_build_info", "vramobs version and backend", labels=["version", "backend"]
        )
        build.add_metric([__version__, device.backend() if available else "unavailable"], 1)
        yield build
        if not available:
            return  # libvram_ops cannot load: nothing more to say, and nothing to log per scrape
        devices = self._devices()
        yield from self._device_state(devices)
        yield from self._operations(devices)
        yield from self._registry(devices)
        yield from self._pool(devices)
        yield from self._pinned()
        yield from self._streams()
        yield from self._memory(devices)

    def _device_state(self, devices: list[_Device]) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "vramobs_device_info",
            "Device model, PCI bus id and driver, to join on gpu and UUID",
            labels=_DEVICE + ["model_name", "pci_bus_id", "driver_version"],
        )
        up = GaugeMetricFamily("vramobs_device_up", "1 while the device is usable", labels=_DEVICE)
        failed = GaugeMetricFamily(
            "vramobs_device_failed",
            "1 once a sticky error latched the device: the process must restart",
            labels=_DEVICE,
        )
        for dev in devices:
            if dev.info is not None:
                info.add_metric(
                    dev.labels + [dev.info.name, dev.info.pci_bus_id, str(dev.info.driver_version)], 1
                )
            up.add_metric(dev.labels, 1 if dev.state is device.DeviceState.USABLE else 0)
            failed.add_metric(dev.labels, 1 if dev.state is device.DeviceState.FAILED else 0)
        yield from (info, up, failed)

    def _operations(self, devices: list[_Device]) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "vramobs_operation_duration_seconds",
            "Wall time of each vram operation, by outcome",
            labels=_DEVICE + ["op", "outcome"],
            unit="seconds",
        )
        calls = CounterMetricFamily(
            "vramobs_operations", "vram operations by status", labels=_DEVICE + ["op", "status"]
        )
        refused = CounterMetricFamily(
            "vramobs_refused",
            "Calls refused before reaching the driver, by reason",
            labels=_DEVICE + ["op", "reason"],
        )
        copy_bytes = CounterMetricFamily(
            "vramobs_copy_bytes", "Bytes copied by successful copies", labels=_DEVICE + ["direction"],
            unit="bytes",
        )
        copy_seconds = CounterMetricFamily(
            "vramobs_copy_seconds", "Time spent in successful copies", labels=_DEVICE + ["direction"],
            unit="seconds",
        )
        bandwidth = HistogramMetricFamily(
            "vramobs_copy_bandwidth_bytes_per_second",
            "Bandwidth of each successful copy",
            labels=_DEVICE + ["direction"],
        )
        wiped = CounterMetricFamily(
            "vramobs_wipe_bytes", "Bytes overwritten with zeros before being freed",
            labels=_DEVICE, unit="bytes",
        )
        sizes = HistogramMetricFamily(
            "vramobs_allocation_size_bytes", "Size of each successful allocation", labels=_DEVICE,
            unit="bytes",
        )
        statuses, reasons = _label_sets()
        for dev in devices:
            for op, s in stats.op_stats(dev.ordinal).items():
                labels = dev.labels + [op]
                duration.add_metric(labels + ["success"], _cumulative(s.latency_ok), s.latency_ok.total)
                duration.add_metric(labels + ["error"], _cumulative(s.latency_error), s.latency_error.total)
                for name, label in statuses:
                    calls.add_metric(labels + [label], s.by_status.get(name, 0))
                for reason in reasons:
                    refused.add_metric(labels + [reason], s.refused.get(reason, 0))
                direction = _COPY_DIRECTIONS.get(op)
                if direction is not None:
                    copy_bytes.add_metric(dev.labels + [direction], s.bytes_ok)
                    copy_seconds.add_metric(dev.labels + [direction], s.latency_ok.total)
                    bandwidth.add_metric(
                        dev.labels + [direction], _cumulative(s.bandwidth_ok), s.bandwidth_ok.total
                    )
                elif op == "malloc":
                    sizes.add_metric(dev.labels, _cumulative(s.size_ok), s.size_ok.total)
                elif op == "wipe":
                    wiped.add_metric(dev.labels, s.bytes_ok)
        yield from (duration, calls, refused, copy_bytes, copy_seconds, bandwidth, sizes, wiped)

    def _registry(self, devices: list[_Device]) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: Optional[list[str]] = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=_DEVICE + (extra or []))

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=_DEVICE)

        live = gauge("vramobs_live_allocations", "Allocations made through vramobs, not yet freed")
        live_bytes = gauge("vramobs_live_bytes", "Bytes of live allocations, as asked for")
        peak = gauge("vramobs_peak_live_bytes", "Highest live bytes since the process started")
        waste = gauge("vramobs_allocation_waste_bytes", "Live bytes accounted minus bytes asked for")
        oldest = gauge("vramobs_oldest_allocation_age_seconds", "Age of the oldest live allocation")
        allocs = counter("vramobs_allocations", "Successful allocations")
        frees = counter("vramobs_frees", "Successful frees")
        repeated = counter("vramobs_repeated_frees", "Frees of already-freed pointers (no-ops)")
        lost = counter("vramobs_lost_allocations", "Allocations dropped because their device failed")
        leaked = counter("vramobs_leaked_buffers", "Buffers garbage-collected without close()")
        leaked_bytes = counter("vramobs_leaked_bytes", "Bytes of buffers garbage-collected without close()")
        retries = counter("vramobs_allocation_retries", "Allocations retried after out-of-memory")
        give_ups = counter(
            "vramobs_allocation_give_ups", "Allocations that stayed out of memory after retries"
        )
        tag_bytes = gauge("vramobs_tag_live_bytes", "Live bytes per owner tag", ["tag"])
        tag_count = gauge("vramobs_tag_live_allocations", "Live allocations per owner tag", ["tag"])
        declared = tags.declared()
        leak_counts = leaks.counts()
        retry_counts = retry.counts()
        for dev in devices:
            r = stats.registry_stats(dev.ordinal)
            labels = dev.labels
            live.add_metric(labels, r.live_count)
            live_bytes.add_metric(labels, r.live_bytes)
            peak.add_metric(labels, r.peak_bytes)
            waste.add_metric(labels, r.live_rounded_bytes - r.live_bytes)
            oldest.add_metric(labels, r.oldest_age_seconds or 0.0)
            allocs.add_metric(labels, r.allocs_total)
            frees.add_metric(labels, r.frees_total)
            repeated.add_metric(labels, r.repeated_frees_total)
            lost.add_metric(labels, r.lost_total)
            buffers, nbytes = leak_counts.get(dev.ordinal, (0, 0))
            leaked.add_metric(labels, buffers)
            leaked_bytes.add_metric(labels, nbytes)
            retried, gave_up = retry_counts.get(dev.ordinal, (0, 0))
            retries.add_metric(labels, retried)
            give_ups.add_metric(labels, gave_up)
            for tag in declared:
                count, nbytes = r.by_tag.get(tag, (0, 0))
                tag_count.add_metric(labels + [tag], count)
                tag_bytes.add_metric(labels + [tag], nbytes)
        yield from (live, live_bytes, peak, waste, oldest, allocs, frees, repeated, lost, leaked,
                    leaked_bytes, retries, give_ups, tag_bytes, tag_count)

    def _pinned(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "vramobs_pinned_bytes", "Page-locked host memory vramobs holds, by kind",
            labels=["kind"], unit="bytes",
        )
        staged = CounterMetricFamily(
            "vramobs_staged_copies", "Copies of pageable host memory made through staging buffers"
        )
        cleared = CounterMetricFamily(
            "vramobs_staging_cleared_bytes",
            "Staging buffer bytes cleared after copies of allocations wiped on free", unit="bytes",
        )
        h = pinned.host_stats()
        for kind, value in (("live", h.live_bytes), ("cached", h.cached_bytes),
                            ("registered", h.registered_bytes), ("staging", h.staging_bytes)):
            held.add_metric([kind], value)
        staged.add_metric([], h.staged_copies_total)
        cleared.add_metric([], h.staging_cleared_bytes_total)
        yield from (held, staged, cleared)

    def _streams(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "vramobs_async_copies_pending", "Copies handed to CUDA streams, not yet complete"
        )
        copies = CounterMetricFamily(
            "vramobs_async_copies",
            "Async copies by outcome: completed or failed on their stream, or done at the call "
            "(immediate: ordinary host memory, or no peer path)",
            labels=["outcome"],
        )
        drained = CounterMetricFamily(
            "vramobs_async_copies_drained",
            "Async copies a free waited for before their caller did",
        )
        a = streams.async_stats()
        pending.add_metric([], a.pending)
        for outcome, value in (("completed", a.completed_total), ("failed", a.failed_total),
                               ("immediate", a.immediate_total)):
            copies.add_metric([outcome], value)
        drained.add_metric([], a.drained_total)
        yield from (pending, copies, drained)

    def _pool(self, devices: list[_Device]) -> Iterator[Metric]:
        cached = GaugeMetricFamily(
            "vramobs_pool_cached_bytes", "Device memory the pool holds for reuse", labels=_DEVICE,
            unit="bytes",
        )
        totals = {
            name: CounterMetricFamily(
                f"vramobs_pool_{name}", doc, labels=_DEVICE,
                unit="bytes" if name.endswith("_bytes") else "",
            )
            for name, doc in (
                ("hits", "Allocations served from the pool's cache"),
                ("misses", "Allocations the pool passed to the driver"),
                ("released_bytes", "Cached bytes returned to the driver (trim, full cache, OOM)"),
                ("oom_retries", "Allocations retried after releasing the cache on out-of-memory"),
                ("oom_give_ups", "Allocations still out of memory after releasing the cache"),
                ("dropped_bytes", "Cached bytes lost with their failed device"),
            )
        }
        for dev in devices:
            s = pool.pool_stats(dev.ordinal)
            cached.add_metric(dev.labels, s.cached_bytes)
            for name, family in totals.items():
                family.add_metric(dev.labels, getattr(s, f"{name}_total"))
        yield cached
        yield from totals.values()

    def _memory(self, devices: list[_Device]) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "vramobs_device_memory_bytes",
            "Device memory as CUDA (cudaMemGetInfo) and NVML report it",
            labels=_DEVICE + ["source", "state"],
        )
        discrepancy = GaugeMetricFamily(
            "vramobs_memory_discrepancy_bytes",
            "CUDA minus NVML, after accounting for NVML's reserved memory",
            labels=_DEVICE + ["kind"],
        )
        process = GaugeMetricFamily(
            "vramobs_process_memory_bytes", "This process's device memory, as NVML sees it",
            labels=_DEVICE,
        )
        unattributed = GaugeMetricFamily(
            "vramobs_unattributed_bytes",
            "This process's device memory held outside vramobs and its CUDA context",
            labels=_DEVICE,
        )
        context = GaugeMetricFamily(
            "vramobs_context_bytes", "The CUDA context's own device memory", labels=_DEVICE
        )
        nvml_up = GaugeMetricFamily("vramobs_nvml_up", "1 when NVML answered at this scrape")
        answered = False
        for dev in devices:
            if dev.state is not device.DeviceState.USABLE:
                continue  # a failed device is not queried: its driver calls would fail or hang
            labels = dev.labels
            cuda, nvml = self._reading(dev)
            if cuda is not None:
                for state, value in (("free", cuda.free), ("used", cuda.used), ("total", cuda.total)):
                    memory.add_metric(labels + ["cuda", state], value)
            if nvml is None:
                continue
            answered = True
            for state in ("free", "used", "total", "reserved"):
                memory.add_metric(labels + ["nvml", state], getattr(nvml, state))
            if cuda is not None:
                discrepancy.add_metric(labels + ["total"], cuda.total - (nvml.total - nvml.reserved))
                discrepancy.add_metric(labels + ["free"], cuda.free - nvml.free)
            ctx = self._context_bytes.get(dev.uuid, 0)
            context.add_metric(labels, ctx)
            if nvml.process_used is not None:
                process.add_metric(labels, nvml.process_used)
                tracked = _tracked_bytes(dev.ordinal)
                unattributed.add_metric(labels, nvml.process_used - tracked - ctx)
        nvml_up.add_metric([], 1 if answered else 0)
        yield from (memory, discrepancy, process, unattributed, context, nvml_up)


    def _reading(self, dev: _Device) -> tuple[Optional[device.MemInfo], Optional[NvmlMemory]]:
        """cudaMemGetInfo and NVML for a device, read together at most once per max_age."""
        now = time.monotonic()
        cached = self._readings.get(dev.ordinal)
        if cached is not None and now - cached[0] < self._max_age:
            return cached[1], cached[2]
        try:
            cuda: Optional[device.MemInfo] = device.get_info(dev.ordinal)
        except VramError as exc:
            log.warning("cudaMemGetInfo on device %d failed: %s", dev.ordinal, exc)
            cuda = None
        nvml = self._nvml.memory(dev.uuid) if dev.uuid.startswith("GPU-") else None
        self._readings[dev.ordinal] = (now, cuda, nvml)
        return cuda, nvml


def _tracked_bytes(ordinal: int) -> int:
    """Device memory vramobs holds: live allocations as the driver rounds them, and the pool's
    blocks (cached, and the class rounding of those handed out)."""
    held = pool.pool_stats(ordinal)
    return stats.registry_stats(ordinal).live_rounded_bytes + held.cached_bytes + held.slack_bytes


def _label_sets() -> tuple[list[tuple[str, str]], list[str]]:
    """Every status (C name, label) and refusal reason: all are published, zeros included,
    so a panel or alert never sees an absent series where it should see 0."""
    lib = _native.lib()
    statuses = []
    for code in range(_native.STATUS_CAPACITY):
        name = lib.vram_status_name(code).decode()
        if name != "VRAM_UNKNOWN_STATUS":
            statuses.append((name, _status_label(name)))
    reasons = []
    for code in range(1, _native.REASON_CAPACITY):
        reason = lib.vram_reason_name(code).decode()
        if reason not in ("unknown", "invalid_backend"):
            reasons.append(reason)
    return statuses, reasons
