"""Serving /metrics and /healthz (vramobs/exporter.py): the embedded HTTP server, the WSGI and
ASGI apps, a latched device and no device at all (children on the CUDA backend over the fake
driver of tests/fakecuda), and ``vramobs serve``."""

import asyncio
import gzip
import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import vramobs
from vramobs import exporter, stats
from vramobs.collector import VramCollector
from vramobs.nvml import NvmlReader


VRAMOBS = str(Path(sys.executable).with_name("vramobs"))


class NoNvml(NvmlReader):
    def memory(self, uuid):
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, headers=None, timeout=10):
    """(status, headers as a lower-cased dict, body bytes) of a GET on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def samples(text):
    """{(name, sorted label items): value} of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fresh_registry():
    reg = CollectorRegistry(auto_describe=False)
    VramCollector(reg, nvml=NoNvml())
    return reg


@pytest.fixture
def registry():
    return fresh_registry()


@pytest.fixture(scope="module")
def served(host_backend):
    """start_http_server on a free port with a fresh registry; yields the port. One server
    for the module: shutting one down takes half a second."""
    server, thread = exporter.start_http_server(free_port(), "127.0.0.1", registry=fresh_registry())
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not thread.is_alive()


def labels0():
    return (("UUID", vramobs.device_info(0).uuid), ("gpu", "0"))


# ---------------------------------------------------------------------------------------------
# The embedded server.
# ---------------------------------------------------------------------------------------------


def test_http_server_serves_metrics(served):
    n = int.from_bytes(os.urandom(3), "little") + 1
    with vramobs.alloc(n, tag="weights"):
        live = stats.registry_stats(0).live_bytes
        status, headers, body = get(served, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert headers.get("content-encoding") is None
    text = body.decode()
    snap = samples(text)
    assert snap[("vramobs_build_info", (("backend", "host"), ("version", vramobs.__version__)))] == 1
    assert snap[("vramobs_live_bytes", labels0())] == live
    assert snap[("vramobs_tag_live_bytes", labels0() + (("tag", "weights"),))] >= n


def test_http_server_compresses_when_asked(served):
    status, headers, body = get(served, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert 'vramobs_build_info{backend="host"' in text
    assert ("vramobs_device_up", labels0()) in samples(text)


def test_http_server_healthz(served):
    status, headers, body = get(served, "/healthz")
    assert (status, body) == (200, b"1 devices usable\n")
    assert headers["content-type"].startswith("text/plain")
    assert exporter.health() == (True, "1 devices usable")


def test_http_server_serves_concurrent_scrapes(served):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: get(served, "/metrics")[0], range(12)))
    assert results == [200] * 12


# ---------------------------------------------------------------------------------------------
# WSGI and ASGI.
# ---------------------------------------------------------------------------------------------


def call_wsgi(app, path, **extra):
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", **extra}
    setup_testing_defaults(environ)
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"] = status
        captured["headers"] = {k.lower(): v for k, v in headers}

    body = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], body


def test_wsgi_app(registry):
    app = exporter.make_wsgi_app(registry)
    status, headers, body = call_wsgi(app, "/healthz")
    assert (status, body) == ("200 OK", b"1 devices usable\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"

    n = int.from_bytes(os.urandom(2), "little") + 1
    with vramobs.alloc(n):
        live = stats.registry_stats(0).live_bytes
        status, headers, body = call_wsgi(app, "/metrics")
    assert status.startswith("200")
    assert headers["content-type"].startswith("text/plain")
    snap = samples(body.decode())
    assert snap[("vramobs_live_bytes", labels0())] == live

    status, headers, body = call_wsgi(app, "/metrics", HTTP_ACCEPT_ENCODING="gzip")
    assert status.startswith("200") and headers["content-encoding"] == "gzip"
    assert b"vramobs_build_info" in gzip.decompress(body)


def call_asgi(app, path, headers=()):
    """Drive an ASGI app through one HTTP request: (status, headers, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 12345),
        "server": ("127.0.0.1", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = [m for m in sent if m["type"] == "http.response.start"]
    assert len(start) == 1, sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start[0]["status"], {k.decode().lower(): v.decode() for k, v in start[0]["headers"]}, body


def test_asgi_app(registry):
    app = exporter.make_asgi_app(registry)
    status, headers, body = call_asgi(app, "/healthz")
    assert (status, body) == (200, b"1 devices usable\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"

    n = int.from_bytes(os.urandom(2), "little") + 1
    with vramobs.alloc(n, tag="kv_cache"):
        live = stats.registry_stats(0).live_bytes
        status, headers, body = call_asgi(app, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    snap = samples(body.decode())
    assert snap[("vramobs_live_bytes", labels0())] == live
    assert snap[("vramobs_build_info", (("backend", "host"), ("version", vramobs.__version__)))] == 1

    status, headers, body = call_asgi(app, "/metrics", [("Accept-Encoding", "gzip")])
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"vramobs_build_info" in gzip.decompress(body)


def test_wsgi_and_asgi_healthz_503_when_a_device_is_not_usable(registry, monkeypatch):
    """health() reads each device's state: make device 0 report FAILED, then UNAVAILABLE."""
    for state, reason in (
        (vramobs.DeviceState.FAILED, b"devices failed (restart the process): [0]\n"),
        (vramobs.DeviceState.UNAVAILABLE, b"devices unavailable: [0]\n"),
    ):
        monkeypatch.setattr(exporter, "device_state", lambda d, state=state: state)
        assert exporter.health() == (False, reason.decode().strip())
        status, headers, body = call_wsgi(exporter.make_wsgi_app(registry), "/healthz")
        assert (status, body) == ("503 Service Unavailable", reason)
        assert headers["content-type"] == "text/plain; charset=utf-8"
        status, headers, body = call_asgi(exporter.make_asgi_app(registry), "/healthz")
        assert (status, body) == (503, reason)
        # /metrics keeps serving.
        assert call_wsgi(exporter.make_wsgi_app(registry), "/metrics")[0].startswith("200")
        assert call_asgi(exporter.make_asgi_app(registry), "/metrics")[0] == 200


def test_default_registry_is_made_once():
    first = exporter.default_registry()
    assert exporter.default_registry() is first
    text = call_wsgi(exporter.make_wsgi_app(), "/metrics")[2].decode()
    assert 'vramobs_build_info{backend="host"' in text


# ---------------------------------------------------------------------------------------------
# A latched device, and no device: children on the CUDA backend.
# ---------------------------------------------------------------------------------------------

CHILD_HTTP = r"""
import http.client
from vramobs import exporter


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def serve():
    server, thread = exporter.start_http_server(0, "127.0.0.1")
    return server, server.server_port


"""


def with_http(code):
    """Child code with HTTP helpers: serve() starts the exporter, get() fetches from it."""
    return CHILD_HTTP + textwrap.dedent(code)


def test_healthz_503_once_a_device_latched_failed(child):
    result = child(
        with_http(
            r"""
        rnd = random.Random(SEED)
        n = rnd.randrange(1, MiB)
        buf = vramobs.alloc(n)
        server, port = serve()
        check("healthz before", get(port, "/healthz"), (200, "1 devices usable\n"))

        inject("cuMemcpyHtoD", 700, 1, sticky=True)
        raises("copy into the latched device", errors.DeviceFailedError, buf.copy_from, randbytes(rnd, 64))
        check("state", vramobs.device_state(0), DeviceState.FAILED)

        health = get(port, "/healthz")
        metrics = get(port, "/metrics")
        check("metrics status", metrics[0], 200)
        during = metrics[1]
        # The buffer's memory goes with the device: closing it counts a lost allocation.
        raises("close on the latched device", errors.DeviceFailedError, buf.close)
        after = get(port, "/metrics")[1]
        check("healthz after close", get(port, "/healthz")[0], 503)
        server.shutdown()
        finish(health=health, during=during, after=after, n=n, uuid=vramobs.device_info(0).uuid)
        """)
    )
    status, body = result["health"]
    assert status == 503
    assert body == "devices failed (restart the process): [0]\n"
    labels = (("UUID", result["uuid"]), ("gpu", "0"))
    assert result["uuid"] == "GPU-facecda0-0000-4000-8000-000000000000"
    during = samples(result["during"])
    assert during[("vramobs_device_failed", labels)] == 1
    assert during[("vramobs_device_up", labels)] == 0
    assert during[("vramobs_build_info", (("backend", "cuda"), ("version", vramobs.__version__)))] == 1
    assert during[("vramobs_operations_total", labels + (("op", "memcpy_h2d"), ("status", "device_failed")))] == 1
    assert during[("vramobs_live_bytes", labels)] == result["n"]
    assert during[("vramobs_lost_allocations_total", labels)] == 0
    # A failed device is not queried for memory.
    assert not [k for k in during if k[0] == "vramobs_device_memory_bytes"]
    after = samples(result["after"])
    assert after[("vramobs_lost_allocations_total", labels)] == 1
    assert after[("vramobs_live_allocations", labels)] == 0
    assert after[("vramobs_device_failed", labels)] == 1


def test_healthz_503_names_only_the_failed_device(child):
    result = child(
        with_http(
            r"""
        buf = vramobs.alloc(4096, device=1)
        server, port = serve()
        inject("cuMemcpyDtoH", 700, 1, sticky=True)
        raises("read from device 1", errors.DeviceFailedError, buf.to_bytes)
        # A sticky error kills one context; the fake poisons every call until reset, so reset
        # it: the other devices work again, as they would on a real driver.
        fake().fakecuda_reset()
        states = [int(vramobs.device_state(d)) for d in range(3)]
        health = get(port, "/healthz")
        metrics = get(port, "/metrics")[1]
        raises("close", errors.DeviceFailedError, buf.close)
        server.shutdown()
        finish(health=health, metrics=metrics, states=states)
        """),
        FAKECUDA_DEVICES=3,
    )
    assert result["states"] == [0, 1, 0]
    assert result["health"] == [503, "devices failed (restart the process): [1]\n"]
    snap = samples(result["metrics"])
    failed = {dict(k[1])["gpu"]: v for k, v in snap.items() if k[0] == "vramobs_device_failed"}
    up = {dict(k[1])["gpu"]: v for k, v in snap.items() if k[0] == "vramobs_device_up"}
    assert failed == {"0": 0, "1": 1, "2": 0}
    assert up == {"0": 1, "1": 0, "2": 1}
    # Only the usable devices are asked for their memory.
    queried = {dict(k[1])["gpu"] for k in snap if k[0] == "vramobs_device_memory_bytes"}
    assert queried == {"0", "2"}


def test_no_device_healthz_503_and_metrics_keep_serving(child):
    result = child(
        with_http(
            r"""
        server, port = serve()
        health = get(port, "/healthz")
        metrics = get(port, "/metrics")
        server.shutdown()
        finish(health=health, metrics=metrics, backend=vramobs.backend())
        """),
        VRAMOBS_CUDA_DRIVER="/nonexistent",
    )
    status, body = result["health"]
    assert status == 503
    assert body.startswith("no device: ")
    assert "/nonexistent" in body
    assert result["metrics"][0] == 200
    snap = samples(result["metrics"][1])
    assert snap[("vramobs_build_info", (("backend", "cuda"), ("version", vramobs.__version__)))] == 1
    assert snap[("vramobs_nvml_up", ())] == 0
    assert ("vramobs_scrape_duration_seconds", ()) in snap
    device_series = [k for k in snap if "UUID" in dict(k[1]) or "gpu" in dict(k[1])]
    assert device_series == []


WITHOUT_LIBRARY = """
import http.client, json
from vramobs import exporter

server, thread = exporter.start_http_server(0, "127.0.0.1")
out = {}
for path in ("/healthz", "/metrics"):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    out[path] = [response.status, response.read().decode()]
    conn.close()
server.shutdown()
print("RESULT " + json.dumps(out))
"""


def _without_library(run_python, tmp_path):
    result = run_python(WITHOUT_LIBRARY, env={"VRAMOBS_LIBRARY": str(tmp_path / "none.so")})
    assert result.returncode == 0, result.stderr
    (line,) = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    import json

    return json.loads(line[len("RESULT "):])


def test_metrics_keep_serving_without_libvram_ops(run_python, tmp_path):
    out = _without_library(run_python, tmp_path)
    status, text = out["/metrics"]
    assert status == 200
    snap = samples(text)
    assert [k for k in snap if k[0] == "vramobs_build_info"] != []
    assert ("vramobs_scrape_duration_seconds", ()) in snap


def test_healthz_503_without_libvram_ops(run_python, tmp_path):
    status, body = _without_library(run_python, tmp_path)["/healthz"]
    assert status == 503
    assert body.endswith("\n") and body.count("\n") == 1
    assert body.startswith("no device: cannot load libvram_ops")


# ---------------------------------------------------------------------------------------------
# vramobs serve.
# ---------------------------------------------------------------------------------------------


def test_vramobs_serve(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMOBS_")}
    proc = subprocess.Popen(
        [VRAMOBS, "serve", "--backend", "host", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                status, headers, body = get(port, "/metrics", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "vramobs serve did not start listening"
                time.sleep(0.05)
        assert status == 200 and headers["content-type"].startswith("text/plain")
        snap = samples(body.decode())
        assert snap[("vramobs_build_info", (("backend", "host"), ("version", vramobs.__version__)))] == 1
        uuid = "HOST-00000000-0000-0000-0000-000000000000"
        assert snap[("vramobs_device_up", (("UUID", uuid), ("gpu", "0")))] == 1
        assert snap[("vramobs_live_allocations", (("UUID", uuid), ("gpu", "0")))] == 0
        assert get(port, "/healthz")[0::2] == (200, b"1 devices usable\n")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"vramobs: backend host; serving http://0.0.0.0:{port}/metrics" in out
    assert "Traceback" not in err
