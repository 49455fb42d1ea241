"""OpenTelemetry spans of vram operations (vramobs/tracing.py), recorded by an SDK
TracerProvider with an in-memory exporter.

OpenTelemetry lets a process set its global tracer provider once; this module sets one for
its own tests and puts the globals back afterwards, as opentelemetry's own test utilities do.
"""

import os

import pytest

import vramobs
from vramobs import raw, tracing

trace = pytest.importorskip("opentelemetry.trace")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402
from opentelemetry.util._once import Once  # noqa: E402


@pytest.fixture(scope="module")
def span_exporter(host_backend):
    saved = (trace._TRACER_PROVIDER_SET_ONCE, trace._TRACER_PROVIDER, tracing._tracer,
             tracing._sdk_seen)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider
    yield exporter
    provider.shutdown()
    # vramobs remembers that a provider was set (it can be set only once, outside tests).
    (trace._TRACER_PROVIDER_SET_ONCE, trace._TRACER_PROVIDER, tracing._tracer,
     tracing._sdk_seen) = saved


@pytest.fixture
def spans(span_exporter):
    """The exporter, emptied; tracing enabled at full rate (and restored after)."""
    saved = (tracing._enabled, tracing._sample_rate)
    tracing.configure(enabled=True, sample_rate=1.0)
    span_exporter.clear()
    yield span_exporter
    tracing._enabled, tracing._sample_rate = saved
    span_exporter.clear()


def take(exporter):
    """The spans finished since the last take, oldest first."""
    finished = list(exporter.get_finished_spans())
    exporter.clear()
    return finished


@pytest.fixture
def uuid():
    return vramobs.device_info(0).uuid


def check_common(span, op, nbytes, uuid, outcome="success", status_code=0):
    attrs = dict(span.attributes)
    assert span.name == f"vram.{op}"
    assert attrs["vram.operation"] == op
    assert attrs["vram.bytes"] == nbytes
    assert attrs["vram.device"] == 0
    assert attrs["vram.outcome"] == outcome
    assert attrs["vram.status_code"] == status_code
    assert attrs["vramobs.backend"] == "host"
    assert attrs["hw.id"] == uuid
    assert attrs["hw.type"] == "gpu"
    assert span.instrumentation_scope.name == "vramobs"
    assert span.instrumentation_scope.version == vramobs.__version__
    assert span.end_time >= span.start_time
    return attrs


def test_tracing_is_active_with_an_sdk_provider(spans):
    assert tracing.active()


def test_one_span_per_operation(spans, uuid):
    n = int.from_bytes(os.urandom(3), "little") + 1
    data = os.urandom(n)

    buf = vramobs.alloc(n)
    (span,) = take(spans)
    attrs = check_common(span, "malloc", n, uuid)
    assert "vram.bandwidth_bytes_per_second" not in attrs
    assert "error.type" not in attrs
    assert span.status.status_code is StatusCode.UNSET

    buf.copy_from(data)
    (span,) = take(spans)
    attrs = check_common(span, "memcpy_h2d", n, uuid)
    assert attrs["vram.bandwidth_bytes_per_second"] > 0
    duration_ns = span.end_time - span.start_time
    # The bandwidth is of the call itself, which the span encloses.
    assert attrs["vram.bandwidth_bytes_per_second"] >= n * 1e9 / duration_ns

    part = int.from_bytes(os.urandom(3), "little") % n + 1
    offset = n - part
    out = bytearray(part)
    buf.copy_to(out, offset=offset)
    assert out == data[offset:]
    (span,) = take(spans)
    attrs = check_common(span, "memcpy_d2h", part, uuid)
    assert attrs["vram.bandwidth_bytes_per_second"] > 0

    buf.close()
    (span,) = take(spans)
    attrs = check_common(span, "free", n, uuid)
    assert "vram.bandwidth_bytes_per_second" not in attrs

    buf.close()  # idempotent: no second free, no span
    assert take(spans) == []

    info = vramobs.get_info()
    (span,) = take(spans)
    check_common(span, "get_info", 0, uuid)
    assert info.total == 8 << 30


def test_to_device_and_to_bytes(spans, uuid):
    n = int.from_bytes(os.urandom(2), "little") + 1
    data = os.urandom(n)
    with vramobs.to_device(data, tag="weights") as buf:
        assert buf.to_bytes() == data
    names = [(s.name, s.attributes["vram.bytes"]) for s in take(spans)]
    assert names == [("vram.malloc", n), ("vram.memcpy_h2d", n), ("vram.memcpy_d2h", n), ("vram.free", n)]


def test_raw_operations_are_not_traced(spans):
    status, address = raw.malloc(4096)
    assert status == 0
    assert raw.get_info()[0] == 0
    assert raw.free(address) == 0
    assert take(spans) == []


def test_a_failed_allocation_is_an_error_span(spans, uuid):
    total = vramobs.get_info().total
    take(spans)
    nbytes = total + int.from_bytes(os.urandom(2), "little") + 1
    with pytest.raises(vramobs.OutOfMemoryError):
        vramobs.alloc(nbytes)
    (span,) = take(spans)
    attrs = check_common(span, "malloc", nbytes, uuid, outcome="error", status_code=1)
    assert attrs["error.type"] == "VRAM_ERR_ALLOCATION_FAILED"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "VRAM_ERR_ALLOCATION_FAILED"
    assert "vram.bandwidth_bytes_per_second" not in attrs


def test_a_refused_call_is_an_error_span(spans, uuid):
    with pytest.raises(vramobs.InvalidArgumentError):
        vramobs.alloc(0)
    (span,) = take(spans)
    attrs = check_common(span, "malloc", 0, uuid, outcome="error", status_code=2)
    assert attrs["error.type"] == "VRAM_ERR_INVALID_PARAMETERS"
    assert span.status.status_code is StatusCode.ERROR


def test_a_copy_refused_in_python_makes_no_span(spans):
    with vramobs.alloc(100) as buf:
        take(spans)
        with pytest.raises(vramobs.OutOfBoundsError):
            buf.copy_from(b"x" * 101)
        assert take(spans) == []


def test_spans_nest_under_the_callers_span(spans, uuid):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as outer:
        with vramobs.to_device(os.urandom(1000)) as buf:
            buf.to_bytes()
        vramobs.get_info()
    finished = take(spans)
    request = finished[-1]
    assert request.name == "request"
    children = finished[:-1]
    assert [s.name for s in children] == [
        "vram.malloc", "vram.memcpy_h2d", "vram.memcpy_d2h", "vram.free", "vram.get_info",
    ]
    for s in children:
        assert s.parent is not None
        assert s.parent.span_id == outer.get_span_context().span_id
        assert s.context.trace_id == outer.get_span_context().trace_id
    # Outside any span, an operation starts a trace of its own.
    vramobs.get_info()
    (alone,) = take(spans)
    assert alone.parent is None
    assert alone.context.trace_id != outer.get_span_context().trace_id


def test_a_buffer_collected_open_traces_its_free(spans, uuid):
    import warnings

    n = int.from_bytes(os.urandom(2), "little") + 1
    buf = vramobs.alloc(n)
    take(spans)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del buf
    (span,) = take(spans)
    check_common(span, "free", n, uuid)


def test_configure_enabled_false_makes_no_spans(spans):
    tracing.configure(enabled=False)
    assert not tracing.active()
    with vramobs.to_device(os.urandom(64)) as buf:
        buf.to_bytes()
    vramobs.get_info()
    assert take(spans) == []
    tracing.configure(enabled=True)
    vramobs.get_info()
    assert [s.name for s in take(spans)] == ["vram.get_info"]


def test_sample_rate(spans):
    tracing.configure(sample_rate=0.0)
    for _ in range(200):
        vramobs.get_info()
    assert take(spans) == []

    tracing.configure(sample_rate=1.0)
    for _ in range(50):
        vramobs.get_info()
    assert len(take(spans)) == 50

    tracing.configure(sample_rate=0.5)
    for _ in range(2000):
        vramobs.get_info()
    kept = len(take(spans))
    assert 800 < kept < 1200  # binomial(2000, 0.5): 9 standard deviations either side


@pytest.mark.parametrize("rate", [-0.01, 1.01, float("nan")])
def test_sample_rate_out_of_range_is_refused(spans, rate):
    tracing.configure(sample_rate=0.25)
    with pytest.raises(ValueError):
        tracing.configure(sample_rate=rate)
    assert tracing._sample_rate == 0.25


def test_without_an_sdk_provider_no_span_machinery_runs(run_python):
    result = run_python(
        """
        import os
        import vramobs
        from vramobs import tracing
        from opentelemetry import trace

        vramobs.use_backend("host")

        def no_tracer():
            raise AssertionError("a tracer was requested without an SDK provider")

        real = tracing._get_tracer
        tracing._get_tracer = no_tracer
        print("proxy", tracing.active())
        with vramobs.to_device(os.urandom(1000)) as buf:
            buf.to_bytes()
        vramobs.get_info()
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        print("noop", tracing.active())
        vramobs.get_info()
        print("tracer", tracing._tracer)

        # The check above can fail: with an SDK provider, spans are made.
        from opentelemetry.util._once import Once
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        tracing._get_tracer = real
        print("sdk", tracing.active())
        vramobs.get_info()
        print("spans", [s.name for s in exporter.get_finished_spans()])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "proxy False",
        "noop False",
        "tracer None",
        "sdk True",
        "spans ['vram.get_info']",
    ]
