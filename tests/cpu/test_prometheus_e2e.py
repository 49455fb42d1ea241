"""End to end: a real Prometheus scrapes a real exporter under the demo workload, loads the
shipped rules, and every dashboard panel's PromQL returns data through its HTTP API.

On CI the demo runs on the host backend, where NVML has nothing to say: panels that need
NVML must then be empty and ``vramobs_nvml_up`` 0. tests/gpu/run.sh runs this file again
with VRAMOBS_E2E_BACKEND=cuda, where every panel must show data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BACKEND = os.environ.get("VRAMOBS_E2E_BACKEND", "host")
DCGM_ROW = "DCGM join"
NVML_METRICS = (
    'source="nvml"',
    "vramobs_memory_discrepancy_bytes",
    "vramobs_process_memory_bytes",
    "vramobs_unattributed_bytes",
    "vramobs_context_bytes",
)


def _prometheus() -> str:
    found = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (tests/run.sh installs Debian's package)")
        pytest.skip("prometheus is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _query(base: str, expr: str) -> dict:
    return _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def _panels(panels: list[dict], row: str = "") -> list[tuple[str, dict]]:
    """(row title, panel) for every panel, collapsed rows' panels included."""
    found = []
    for panel in panels:
        if panel.get("type") == "row":
            found += _panels(panel.get("panels", []), panel.get("title", ""))
            row = panel.get("title", "")
        else:
            found.append((row, panel))
    return found


def _promql(expr: str) -> str:
    """What Grafana would send, with its variables filled in for a 1 s scrape interval."""
    return (
        expr.replace("$gpu", ".*")
        .replace("$__rate_interval", "20s")
        .replace("$__range", "1m")
        .replace("$__interval", "1s")
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    prometheus = _prometheus()
    work = tmp_path_factory.mktemp("e2e")
    exporter_port, prometheus_port = _free_port(), _free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "vramobs", "demo", "--backend", BACKEND, "--port", str(exporter_port),
         "--addr", "127.0.0.1", "--rate", "40", "--leak", "--duration", "120"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{REPO}/exporters/rules/*.yml']\n"
        "scrape_configs:\n"
        f"  - job_name: vramobs\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{prometheus_port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # enough scrapes for rate() over the 20 s window to have two points
            assert demo.poll() is None, demo.communicate()[0]
            assert server.poll() is None, server.communicate()[1]
            try:
                samples = _query(base, 'count_over_time(vramobs_build_info{job="vramobs"}[1m])')
                result = samples["data"]["result"]
                if result and float(result[0]["value"][1]) >= 12:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the exporter"
            time.sleep(1)
        yield base
    finally:
        for process in (server, demo):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_target_is_up_and_every_rule_loads(stack: str) -> None:
    targets = _get(f"{stack}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    groups = _get(f"{stack}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 10
    assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]


def test_every_dashboard_panel_shows_data(stack: str) -> None:
    dashboard = json.loads((REPO / "dashboards" / "vramobs.json").read_text())
    nvml_up = float(_query(stack, "vramobs_nvml_up")["data"]["result"][0]["value"][1])
    if BACKEND == "cuda":
        assert nvml_up == 1, "on a GPU, NVML must answer"
    empty, errors, checked = [], [], 0
    for row, panel in _panels(dashboard["panels"]):
        if row.startswith(DCGM_ROW):
            continue  # needs dcgm-exporter, which this stack does not run
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        needs_nvml = all(any(m in e for m in NVML_METRICS) for e in exprs)
        results = []
        for expr in exprs:
            answer = _query(stack, _promql(expr))
            if answer.get("status") != "success":
                errors.append((panel["title"], expr, answer))
            results += answer.get("data", {}).get("result", [])
        checked += 1
        if needs_nvml and not nvml_up:
            assert not results, f"{panel['title']}: NVML-only panel has data without NVML"
        elif not results:
            empty.append(panel["title"])
    assert not errors, errors
    assert not empty, f"panels without data: {empty}"
    assert checked >= 20


def test_the_planted_leak_reaches_prometheus(stack: str) -> None:
    leaked = _query(stack, 'sum(vramobs_leaked_buffers_total{job="vramobs"})')["data"]["result"]
    assert leaked and float(leaked[0]["value"][1]) >= 1
    live = _query(stack, 'sum(vramobs_tag_live_bytes{tag="weights"})')["data"]["result"]
    assert live and float(live[0]["value"][1]) > 0
