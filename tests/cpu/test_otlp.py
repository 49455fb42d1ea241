"""vramobs spans exported over OTLP/HTTP (opentelemetry-exporter-otlp-proto-http) to a local
receiver, as a service sends them to an OpenTelemetry Collector.

The exporting runs in a child interpreter, so that this process's global tracer provider
(which OpenTelemetry lets a process set only once) is left alone.
"""

import gzip
import http.server
import os
import subprocess
import sys
import textwrap
import threading
import zlib

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.server.posts.append((self.path, self.headers.get("Content-Type"), body))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


CHILD = """
import os, sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import vramobs

endpoint, nbytes = sys.argv[1], int(sys.argv[2])
provider = TracerProvider(resource=Resource.create({"service.name": "vramobs-otlp-test"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
trace.set_tracer_provider(provider)

with trace.get_tracer("service").start_as_current_span("request") as request:
    data = os.urandom(nbytes)
    with vramobs.to_device(data, tag="weights") as buf:
        assert buf.to_bytes() == data
    vramobs.get_info()
assert provider.force_flush(20_000), "force_flush timed out"
provider.shutdown()
print(format(request.get_span_context().span_id, "016x"))
"""


def _attributes(span):
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def test_spans_reach_an_otlp_http_receiver(receiver, tmp_path):
    port = receiver.server_address[1]
    nbytes = int.from_bytes(os.urandom(2), "little") + 1
    # The child's exporter takes its settings from its arguments only; run it in a temporary
    # directory so the source tree cannot shadow the installed package.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VRAMOBS_"))}
    env.update(VRAMOBS_BACKEND="host", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), f"http://127.0.0.1:{port}/v1/traces", str(nbytes)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    request_span_id = result.stdout.strip()

    assert receiver.posts, "the receiver got no export"
    assert all(path == "/v1/traces" for path, _, _ in receiver.posts)
    assert all(ctype == "application/x-protobuf" for _, ctype, _ in receiver.posts)
    assert any(b"vram.malloc" in body for _, _, body in receiver.posts)

    spans, resources = [], []
    for _, _, body in receiver.posts:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resources.append(_attributes(rs.resource))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans.append((ss.scope.name, ss.scope.version, span))
    assert all(r.get("service.name") == "vramobs-otlp-test" for r in resources)
    names = sorted(span.name for _, _, span in spans)
    assert names == sorted(
        ["request", "vram.malloc", "vram.memcpy_h2d", "vram.memcpy_d2h", "vram.free", "vram.get_info"]
    )
    import vramobs

    by_name = {span.name: (scope, version, span) for scope, version, span in spans}
    for name in ("vram.malloc", "vram.memcpy_h2d", "vram.memcpy_d2h", "vram.free", "vram.get_info"):
        scope, version, span = by_name[name]
        assert (scope, version) == ("vramobs", vramobs.__version__)
        assert span.parent_span_id.hex() == request_span_id
        attrs = _attributes(span)
        op = name.removeprefix("vram.")
        assert attrs["vram.operation"] == op
        assert attrs["vram.bytes"] == (0 if op == "get_info" else nbytes)
        assert attrs["vram.device"] == 0
        assert attrs["vram.outcome"] == "success"
        assert attrs["vram.status_code"] == 0
        assert attrs["vramobs.backend"] == "host"
        assert attrs["hw.id"] == "HOST-00000000-0000-0000-0000-000000000000"
        assert attrs["hw.type"] == "gpu"
        if op.startswith("memcpy"):
            assert attrs["vram.bandwidth_bytes_per_second"] > 0
    request_span = by_name["request"][2]
    assert request_span.span_id.hex() == request_span_id
    trace_ids = {span.trace_id for _, _, span in spans}
    assert len(trace_ids) == 1
