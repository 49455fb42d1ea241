"""``vramobs demo`` (vramobs/demo.py): an inference-like workload with planted leaks while
/metrics is served, watched from outside as Prometheus would."""

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from vramobs.demo import Workload

VRAMOBS = str(Path(sys.executable).with_name("vramobs"))
HOST_UUID = "HOST-00000000-0000-0000-0000-000000000000"
DEV = (("UUID", HOST_UUID), ("gpu", "0"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    """{(name, sorted label items): value} from /metrics, or None if nothing listens yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        text = response.read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def tag(snap, name, which):
    return snap.get((name, DEV + (("tag", which),)))


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMOBS_")}
    env.update(extra)
    return env


def test_demo_with_leaks_on_the_host_backend(tmp_path):
    workload = Workload.for_backend("host")
    weights = workload.layers * workload.layer_bytes
    port = free_port()
    proc = subprocess.Popen(
        [VRAMOBS, "demo", "--backend", "host", "--duration", "4", "--rate", "50", "--leak",
         "--port", str(port)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # First look: as soon as the weights are loaded and the first request has begun.
        deadline = time.monotonic() + 3.5
        first = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            snap = scrape(port)
            if (
                snap is not None
                and tag(snap, "vramobs_tag_live_bytes", "weights") == weights
                and tag(snap, "vramobs_tag_live_bytes", "kv_cache") is not None
            ):
                first, first_at = snap, time.monotonic()
                break
            time.sleep(0.02)
        assert first is not None, "the demo never showed its weights on /metrics"
        # Second look: well into the run, once the garbage collector has freed a dropped
        # buffer (request 25, half a second in at 50 requests per second).
        second = None
        while proc.poll() is None:
            snap = scrape(port)
            if snap is None:
                break
            if time.monotonic() - first_at >= 1.5 and snap.get(("vramobs_leaked_buffers_total", DEV), 0) >= 1:
                second = snap
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert second is not None, f"no scrape with a leaked buffer while the demo ran\n{out}\n{err}"

    for snap in (first, second):
        assert tag(snap, "vramobs_tag_live_bytes", "weights") == weights
        assert tag(snap, "vramobs_tag_live_allocations", "weights") == workload.layers
        assert tag(snap, "vramobs_tag_live_bytes", "kv_cache") is not None
        assert tag(snap, "vramobs_tag_live_bytes", "activations") is not None
        assert snap[("vramobs_build_info", (("backend", "host"), ("version", _version())))] == 1
    # The planted live leak: every 10th request keeps its activations.
    kept_first = tag(first, "vramobs_tag_live_allocations", "activations")
    kept_second = tag(second, "vramobs_tag_live_allocations", "activations")
    assert kept_second > kept_first
    assert tag(second, "vramobs_tag_live_bytes", "activations") == kept_second * workload.activation_bytes
    # Live allocations rise (leaving out the KV cache, which comes and goes with each request).
    steady = [s[("vramobs_live_allocations", DEV)] - tag(s, "vramobs_tag_live_allocations", "kv_cache")
              for s in (first, second)]
    assert steady[1] > steady[0]
    assert second[("vramobs_leaked_buffers_total", DEV)] >= 1
    assert second[("vramobs_leaked_bytes_total", DEV)] == (
        second[("vramobs_leaked_buffers_total", DEV)] * workload.activation_bytes
    )
    assert second[("vramobs_allocations_total", DEV)] > first[("vramobs_allocations_total", DEV)]

    # The leak report printed at the end names the demo's code.
    assert "live allocations" in out
    assert "largest:" in out and "oldest:" in out
    assert f"{os.sep}vramobs{os.sep}demo.py:" in out
    assert "requests served" in out.splitlines()[-1]
    assert "HOST BACKEND" in err
    assert "Traceback" not in err


def _version():
    import vramobs

    return vramobs.__version__


def test_demo_without_a_gpu_suggests_the_host_backend(tmp_path):
    proc = subprocess.run(
        [VRAMOBS, "demo", "--duration", "1", "--port", str(free_port())],
        cwd=tmp_path,
        env=child_env(VRAMOBS_CUDA_DRIVER="/nonexistent"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "--backend host" in proc.stderr
    assert "vramobs demo --backend host" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
