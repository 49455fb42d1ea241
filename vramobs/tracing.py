"""OpenTelemetry spans for vram operations, through opentelemetry-api only.

One span per operation (``vram.malloc``, ``vram.free``, ``vram.memcpy_h2d``,
``vram.memcpy_d2h``, ``vram.get_info``), nested under the caller's current span. vramobs never
sets a tracer provider: until the service configures an SDK, spans are not even created, so
the no-op costs one check. ``configure(enabled=False)`` turns them off, ``sample_rate``
keeps a fraction of them.

Attributes follow OpenTelemetry's conventions where one exists (``error.type``, ``hw.id`` with
the GPU UUID, ``hw.type``); the rest are ``vram.*``. No GPU span convention exists yet.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Optional

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # opentelemetry-api is optional at run time
    _trace = None

__all__ = ["active", "configure", "traced"]

_enabled = True
_sample_rate = 1.0
_tracer: Any = None
_PROXY_PROVIDERS: tuple[type, ...] = ()
if _trace is not None:
    _PROXY_PROVIDERS = (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)


def configure(*, enabled: Optional[bool] = None, sample_rate: Optional[float] = None) -> None:
    """Turn spans on or off, or keep only ``sample_rate`` (0..1) of them."""
    global _enabled, _sample_rate
    if enabled is not None:
        _enabled = bool(enabled)
    if sample_rate is not None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate!r}")
        _sample_rate = float(sample_rate)


_sdk_seen = False


def _provider_is_set() -> bool:
    """Whether the service installed a real tracer provider. It can be set only once, so a
    yes is cached; until then this costs one attribute read, not get_tracer_provider()'s
    environment lookup."""
    global _sdk_seen
    if _sdk_seen:
        return True
    provider = getattr(_trace, "_TRACER_PROVIDER", _trace)
    if provider is _trace:  # the private global moved: ask the public API
        provider = _trace.get_tracer_provider()
    _sdk_seen = provider is not None and not isinstance(provider, _PROXY_PROVIDERS)
    return _sdk_seen


# Whether the API keeps its provider where _provider_is_set() reads it: then None there (no
# provider set yet, the usual case without an SDK) answers "no" in one attribute read.
_PROVIDER_GLOBAL = _trace is not None and hasattr(_trace, "_TRACER_PROVIDER")


def active() -> bool:
    """Whether the next operation is to be traced. Checked once per operation, on the hot path
    of every one: the common answers come first."""
    if not _enabled or _trace is None:
        return False
    if not _sdk_seen and (
        (_PROVIDER_GLOBAL and _trace._TRACER_PROVIDER is None) or not _provider_is_set()
    ):
        return False
    return _sample_rate >= 1.0 or random.random() < _sample_rate


def _get_tracer() -> Any:
    global _tracer
    if _tracer is None:
        from . import __version__

        _tracer = _trace.get_tracer("vramobs", __version__)
    return _tracer


_uuids: dict[int, str] = {}


def _describe(device: int, status: int) -> dict[str, Any]:
    """Attributes known only after the call; computed only for recorded spans."""
    from . import _native
    from .device import backend, device_info

    uuid = _uuids.get(device)
    if uuid is None:
        try:
            uuid = _uuids[device] = device_info(device).uuid
        except Exception:  # a failed device never described: leave hw.id out
            uuid = ""
    attributes: dict[str, Any] = {"vramobs.backend": backend(), "hw.type": "gpu"}
    if uuid:
        attributes["hw.id"] = uuid
    if status != 0:
        attributes["error.type"] = _native.lib().vram_status_name(status).decode()
    return attributes


def traced(op: str, call: Callable[[], int], *, nbytes: int, device: int) -> int:
    """Run ``call`` (a C operation returning its status) inside a span. Callers check
    :func:`active` first, so an untraced call builds no closure."""
    with _get_tracer().start_as_current_span(f"vram.{op}", record_exception=False) as span:
        start = time.perf_counter_ns()
        status = call()
        elapsed = time.perf_counter_ns() - start
        attributes: dict[str, Any] = {
            "vram.operation": op,
            "vram.bytes": nbytes,
            "vram.device": device,
            "vram.status_code": status,
            "vram.outcome": "success" if status == 0 else "error",
        }
        # An async copy's span times its hand-off to the stream, not the transfer.
        if op.startswith("memcpy") and not op.endswith("_async") and status == 0 and elapsed > 0:
            attributes["vram.bandwidth_bytes_per_second"] = nbytes * 1e9 / elapsed
        attributes.update(_describe(device, status))
        span.set_attributes(attributes)
        if status != 0:
            span.set_status(Status(StatusCode.ERROR, attributes["error.type"]))
        return status
