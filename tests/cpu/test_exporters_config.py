"""The monitoring configuration: Prometheus config and rules (promtool), the rules' unit tests,
docker-compose.yml, the Grafana dashboard and its provisioning.

Every vramobs metric name and label used by a rule, a rule test, or a dashboard query must be
one documented in exporters/METRICS.md: a typo would otherwise give an alert that never fires
or a panel that never shows data. The dashboard's queries are checked as PromQL by promtool,
then run against synthetic series of every documented metric: each panel must show data
without dcgm-exporter, except those in the collapsed DCGM row.

Tools: promtool (apt package prometheus) and docker-compose (apt package docker-compose, whose
Python also provides PyYAML when the test environment lacks it). Without them these tests
skip, except under CI=true, where a missing tool fails them.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPORTERS = REPO / "exporters"
METRICS_MD = EXPORTERS / "METRICS.md"
PROMETHEUS_YML = EXPORTERS / "prometheus.yml"
RULES_DIR = EXPORTERS / "rules"
RULES = RULES_DIR / "vramobs.rules.yml"
RULE_TESTS = EXPORTERS / "tests" / "vramobs.rules.test.yml"
DASHBOARD = REPO / "dashboards" / "vramobs.json"
DATASOURCES = REPO / "dashboards" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = REPO / "dashboards" / "provisioning" / "dashboards" / "vramobs.yml"
COMPOSE = REPO / "docker-compose.yml"

DCGM_ROW = "DCGM join (needs dcgm-exporter)"
EXPECTED_ALERTS = {
    "VramobsHeadroomRunningOut",
    "VramobsLeakGrowth",
    "VramobsFragmentationHigh",
    "VramobsCudaNvmlDrift",
    "VramobsRefusedCallBurst",
    "VramobsLatencyP99High",
    "VramobsDeviceFailed",
    "VramobsDeviceDown",
    "VramobsExporterDown",
    "VramobsUnattributedMemoryHigh",
}
# Labels whose values METRICS.md enumerates: a matcher on one must use a documented value.
ENUMERATED_LABELS = {"op", "outcome", "status", "reason", "direction", "source", "state", "kind",
                     "backend"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# What Grafana puts in place of its variables, to check and run the queries as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${gpu}": ".*",
    "$gpu": ".*",
}

METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])vramobs_[A-Za-z0-9_]+")
RECORDED_NAME = re.compile(r"(?<![A-Za-z0-9_:])vramobs:[A-Za-z0-9_:]+")
SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(vramobs_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


# ------------------------------------------------------------------------------------- tools


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(what: str) -> None:
    if _in_ci():
        pytest.fail(f"{what}; CI=true, so this fails instead of skipping")
    pytest.skip(what)


def require(tool: str, apt_package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        _missing(f"{tool} not found on PATH (Debian/Ubuntu: apt-get install {apt_package})")
    return path


def run(argv: list[str], cwd: Path = REPO, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, **kwargs)


@functools.lru_cache(maxsize=None)
def _yaml_via_docker_compose_python() -> str | None:
    """The interpreter docker-compose 1.x runs on carries PyYAML: use it when this one lacks it."""
    candidates = []
    compose = shutil.which("docker-compose")
    if compose:
        with open(compose, "rb") as f:
            shebang = f.readline().decode(errors="replace")
        words = shebang[2:].split() if shebang.startswith("#!") else []
        if words and os.path.basename(words[0]) == "env" and len(words) > 1:
            words = [shutil.which(words[1]) or words[1]]
        candidates += words[:1]
    candidates.append("/usr/bin/python3")
    for interpreter in candidates:
        if os.path.exists(interpreter) and run([interpreter, "-c", "import yaml"]).returncode == 0:
            return interpreter
    return None


def load_yaml_text(text: str) -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        return yaml.safe_load(text)
    interpreter = _yaml_via_docker_compose_python()
    if interpreter is None:
        _missing("PyYAML not importable here nor in docker-compose's Python "
                 "(apt-get install docker-compose, or pip install pyyaml)")
    done = run([interpreter, "-c",
                "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
               input=text)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@functools.lru_cache(maxsize=None)
def _load_yaml_cached(path: str, mtime: float) -> str:
    return json.dumps(load_yaml_text(Path(path).read_text()))


def load_yaml(path: Path) -> Any:
    return json.loads(_load_yaml_cached(str(path), path.stat().st_mtime))


# ------------------------------------------------------------------------------- METRICS.md


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # gauge, counter, histogram
    labels: frozenset
    row: str  # the whole table row, to look label values up in


@functools.lru_cache(maxsize=None)
def documented() -> dict[str, Metric]:
    metrics = {}
    for line in METRICS_MD.read_text().splitlines():
        if not line.startswith("| `vramobs_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) >= 4, f"METRICS.md row with fewer than 4 columns: {line}"
        name = cells[0].strip("`")
        kind = cells[1].split()[0]
        labels = frozenset(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[2]))
        metrics[name] = Metric(name, kind, labels, line)
    return metrics


@functools.lru_cache(maxsize=None)
def series_names() -> dict[str, Metric]:
    """Names that exist as series: histograms only as _bucket, _sum and _count."""
    names = {}
    for m in documented().values():
        if m.type == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                names[m.name + suffix] = m
        else:
            names[m.name] = m
    return names


@functools.lru_cache(maxsize=None)
def label_vocabulary(label: str) -> frozenset:
    """Values METRICS.md spells out (in backticks or quotes) in the rows of metrics carrying
    this label: op's are listed once, in the latency histogram's row."""
    words = set()
    for m in documented().values():
        if label in m.labels:
            words.update(re.findall(r'[`"]([A-Za-z0-9_]+)[`"]', m.row))
    return frozenset(words)


def check_names_in_expr(expr: str, where: str) -> list[str]:
    """Problems with the vramobs metrics an expression selects: unknown names (typos, or a
    histogram without its _bucket/_sum/_count suffix), labels the metric does not have, and
    values METRICS.md does not list for an enumerated label."""
    problems = []
    names = series_names()
    for match in SELECTOR.finditer(expr):
        name, selector = match.group(1), match.group(2) or ""
        metric = names.get(name)
        if metric is None:
            problems.append(f"{where}: {name} is not a series documented in METRICS.md")
            continue
        allowed = metric.labels | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for label, op, value in MATCHER.findall(selector):
            if label == "__name__":
                continue
            if label not in allowed:
                problems.append(f"{where}: {name} has no label {label!r} (METRICS.md: "
                                f"{sorted(metric.labels)})")
                continue
            if label not in ENUMERATED_LABELS or "$" in value:
                continue
            values = value.split("|") if op in ("=~", "!~") else [value]
            for v in values:
                if not re.fullmatch(r"[A-Za-z0-9_]+", v):
                    continue  # a real regex: not checked value by value
                if v not in label_vocabulary(label):
                    problems.append(f"{where}: {name}{{{label}{op}\"{value}\"}}: {v!r} is not a "
                                    f"documented value of {label}")
    return problems


def check_prose_names(text: str, where: str) -> list[str]:
    """Names in descriptions and comments may also be a histogram family's bare name."""
    known = set(series_names()) | set(documented())
    return [f"{where}: {name} is not documented in METRICS.md"
            for name in sorted(set(METRIC_NAME.findall(text))) if name not in known]


# ------------------------------------------------------------------------------ the artifacts


def rules() -> list[dict]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict) -> Iterator[dict]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets(board: dict) -> Iterator[tuple[dict, dict]]:
    for panel in all_panels(board):
        for t in panel.get("targets", []):
            yield panel, t


def dcgm_row(board: dict) -> dict:
    rows = [p for p in board["panels"] if p.get("type") == "row" and p.get("title") == DCGM_ROW]
    assert len(rows) == 1, f"expected one row titled {DCGM_ROW!r}"
    return rows[0]


def as_promql(expr: str) -> str:
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARIABLES[var])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# --------------------------------------------------------------------------------- METRICS.md


def test_metrics_md_table_parses():
    metrics = documented()
    assert len(metrics) >= 25
    assert {m.type for m in metrics.values()} <= {"gauge", "counter", "histogram"}
    for m in metrics.values():
        if m.type == "counter":
            assert m.name.endswith("_total"), m.name
    assert {"gpu", "UUID"} <= documented()["vramobs_live_bytes"].labels
    assert documented()["vramobs_operation_duration_seconds"].type == "histogram"


# --------------------------------------------------------------------------------- Prometheus


def test_prometheus_config_scrapes_vramobs():
    config = load_yaml(PROMETHEUS_YML)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["vramobs"]
    assert job.get("scrape_interval", config["global"].get("scrape_interval")) == "5s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["vramobs:9405"]


def test_promtool_check_config(tmp_path):
    """The config as the container sees it: /etc/prometheus mirrored under tmp_path."""
    promtool = require("promtool", "prometheus")
    etc = tmp_path / "etc" / "prometheus"
    shutil.copytree(RULES_DIR, etc / "rules")
    text = PROMETHEUS_YML.read_text()
    assert "/etc/prometheus/rules/" in text
    config = etc / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/", f"{etc}/"))
    done = run([promtool, "check", "config", str(config)])
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "SUCCESS" in out and str(etc / "rules" / RULES.name) in out, out


def test_promtool_check_rules():
    promtool = require("promtool", "prometheus")
    files = sorted(str(p) for p in RULES_DIR.glob("*.yml"))
    assert files
    done = run([promtool, "check", "rules", *files])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests():
    promtool = require("promtool", "prometheus")
    done = run([promtool, "test", "rules", str(RULE_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout


def test_alerts_are_complete():
    names = {a["alert"] for a in alerts()}
    assert EXPECTED_ALERTS <= names, f"missing: {EXPECTED_ALERTS - names}"
    for a in alerts():
        name = a["alert"]
        assert "for" in a, f"{name} has no for:"
        assert a.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        annotations = a.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        per_device = any(
            "gpu" in series_names()[m.group(1)].labels
            for m in SELECTOR.finditer(a["expr"])
            if m.group(1) in series_names()
        )
        if per_device:
            for key in ("summary", "description"):
                assert "$labels.gpu" in annotations[key] and "$labels.UUID" in annotations[key], (
                    f"{name}: its {key} must name the device (gpu and UUID)")
    by_name = {a["alert"]: a for a in alerts()}
    assert by_name["VramobsDeviceFailed"]["labels"]["severity"] == "critical"
    assert by_name["VramobsDeviceFailed"]["for"] == "0m"
    assert by_name["VramobsUnattributedMemoryHigh"]["labels"]["severity"] == "info"
    for name in recorded():
        assert re.fullmatch(r"vramobs:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_every_alert_has_firing_and_quiet_tests_and_every_record_a_test():
    tests = load_yaml(RULE_TESTS)["tests"]
    firing, quiet = set(), set()
    exprs_tested = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
        for check in case.get("promql_expr_test", []):
            exprs_tested.update(RECORDED_NAME.findall(check["expr"]))
    names = {a["alert"] for a in alerts()}
    assert (firing | quiet) <= names, f"tests name unknown alerts: {(firing | quiet) - names}"
    assert names <= firing, f"no firing test: {names - firing}"
    assert names <= quiet, f"no not-firing test: {names - quiet}"
    assert recorded() <= exprs_tested, f"recording rules without a test: {recorded() - exprs_tested}"


def test_rules_and_rule_tests_use_documented_metrics():
    problems = []
    for r in rules():
        where = f"rule {r.get('alert') or r.get('record')}"
        problems += check_names_in_expr(r["expr"], where)
        for text in r.get("annotations", {}).values():
            problems += check_prose_names(text, where)
        used = set(RECORDED_NAME.findall(r["expr"]))
        problems += [f"{where}: {n} is not a recording rule" for n in used - recorded()]
    for case in load_yaml(RULE_TESTS)["tests"]:
        where = f"rule test {case.get('name')!r}"
        for series in case.get("input_series", []):
            problems += check_names_in_expr(series["series"], where)
        for check in case.get("promql_expr_test", []):
            problems += check_names_in_expr(check["expr"], where)
            for sample in check.get("exp_samples", []):
                used = set(RECORDED_NAME.findall(sample.get("labels", "")))
                problems += [f"{where}: {n} is not a recording rule" for n in used - recorded()]
    problems += check_prose_names(RULES.read_text(), RULES.name)
    problems += check_prose_names(RULE_TESTS.read_text(), RULE_TESTS.name)
    assert not problems, "\n".join(problems)


def test_name_check_catches_typos():
    """The checks above are only worth something if they fail on a typo."""
    assert check_names_in_expr("rate(vramobs_operation_total[5m])", "x")
    assert check_names_in_expr("vramobs_operation_duration_seconds{op=\"malloc\"}", "x")
    assert check_names_in_expr('vramobs_device_memory_bytes{source="cuda",sate="free"}', "x")
    assert check_names_in_expr('vramobs_device_memory_bytes{source="cdua"}', "x")
    assert check_names_in_expr('vramobs_operations_total{op=~"malloc|memcpy_h2"}', "x")
    assert not check_names_in_expr(
        'rate(vramobs_operation_duration_seconds_bucket{op=~"malloc|free",outcome="success",'
        'le="0.1",gpu=~"$gpu",job="vramobs"}[5m])', "x")
    assert check_prose_names("see vramobs_live_byte", "x")


# ---------------------------------------------------------------------------------- Grafana


def test_dashboard_structure():
    board = dashboard()
    assert board["uid"] == "vramobs"
    assert board["title"] == "vramobs: GPU memory"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    gpu = variables["gpu"]
    assert gpu["type"] == "query" and gpu["multi"] and gpu["includeAll"]
    query = gpu["query"]["query"] if isinstance(gpu["query"], dict) else gpu["query"]
    assert query == "label_values(vramobs_device_info, gpu)"
    assert gpu["datasource"]["uid"] == "${datasource}"

    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in all_panels(board):
        assert "gridPos" in panel, panel.get("title")
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat", "table", "bargauge", "gauge"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no targets"
        refs = [t.get("refId") for t in panel["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), f"{panel['title']}: refIds {refs}"
        for t in panel["targets"]:
            assert t.get("expr"), f"{panel['title']} {t.get('refId')} has no expr"
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]

    row = dcgm_row(board)
    assert row["collapsed"] is True and row["panels"]
    inside = {p["id"] for p in row["panels"]}
    for panel, t in dashboard_targets(board):
        if "DCGM_" in t["expr"]:
            assert panel["id"] in inside, f"{panel['title']} uses DCGM outside {DCGM_ROW!r}"
    for panel in row["panels"]:
        assert any("DCGM_FI_DEV_FB_USED" in t["expr"] for t in panel["targets"]), panel["title"]


def test_dashboard_queries_use_documented_metrics_filtered_by_gpu():
    board = dashboard()
    problems = []
    for panel, t in dashboard_targets(board):
        where = f"panel {panel['title']!r} {t.get('refId')}"
        problems += check_names_in_expr(t["expr"], where)
        used = set(RECORDED_NAME.findall(t["expr"]))
        problems += [f"{where}: {n} is not a recording rule" for n in used - recorded()]
        for match in SELECTOR.finditer(t["expr"]):
            metric = series_names().get(match.group(1))
            if metric is not None and "gpu" in metric.labels:
                if 'gpu=~"$gpu"' not in (match.group(2) or ""):
                    problems.append(f'{where}: {match.group(1)} lacks gpu=~"$gpu"')
        if panel.get("description"):
            problems += check_prose_names(panel["description"], where)
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        problems += check_names_in_expr(text, f"variable {variable['name']}")
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            problems += check_names_in_expr(annotation["expr"], f"annotation {annotation['name']}")
    assert not problems, "\n".join(problems)


def _dashboard_exprs() -> list[tuple[str, str, bool]]:
    """(rule name, PromQL, needs DCGM) for every dashboard query."""
    out = []
    for panel, t in dashboard_targets(dashboard()):
        out.append((f"panel_{panel['id']}_{t.get('refId')}", as_promql(t["expr"]), "DCGM_" in t["expr"]))
    return out


def _write_rules(path: Path, records: list[tuple[str, str]], kind: str) -> None:
    # JSON is YAML: no YAML writer needed
    rules_ = [{kind: name, "expr": expr} for name, expr in records]
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules_}]}, indent=1))


def test_dashboard_queries_are_valid_promql(tmp_path):
    promtool = require("promtool", "prometheus")
    board = dashboard()
    exprs = [(f"dashboard:{name}:query", expr) for name, expr, _ in _dashboard_exprs()]
    exprs += [(f"dashboard:annotation_{i}:query", as_promql(a["expr"]))
              for i, a in enumerate(board["annotations"]["list"]) if "expr" in a]
    path = tmp_path / "dashboard.rules.yml"
    _write_rules(path, exprs, "record")
    done = run([promtool, "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr


UUID0 = "GPU-00000000-0000-4000-8000-000000000000"
SYNTHETIC_LABEL_VALUES = {
    "gpu": ["0"],
    "UUID": [UUID0],
    "op": ["malloc", "free", "memcpy_h2d", "memcpy_d2h", "get_info"],
    "outcome": ["success", "error"],
    "status": ["success", "allocation_failed", "out_of_bounds"],
    "reason": ["null_pointer", "out_of_bounds"],
    "direction": ["h2d", "d2h"],
    "tag": ["untagged", "weights", "kv_cache"],
    "kind": ["total", "free"],
    "version": ["0.0.0"],
    "backend": ["cuda"],
    "modelName": ["NVIDIA H100 80GB HBM3"],
    "pci_bus_id": ["00000000:19:00.0"],
    "driver_version": ["13000"],
}
DEVICE_MEMORY_STATES = [("cuda", s) for s in ("free", "used", "total")] + [
    ("nvml", s) for s in ("free", "used", "total", "reserved")]


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


def synthetic_series(with_dcgm: bool) -> list[dict]:
    """A healthy exporter's scrape of every documented metric, one sample a minute."""
    out = []
    for m in documented().values():
        names = sorted(m.labels - {"source", "state"})
        combos = [dict(zip(names, values)) for values in itertools.product(
            *(SYNTHETIC_LABEL_VALUES.get(n, ["x"]) for n in names))]
        if {"source", "state"} <= m.labels:
            combos = [dict(c, source=s, state=st) for c in combos for s, st in DEVICE_MEMORY_STATES]
        for labels in combos:
            labels = {"job": "vramobs", "instance": "vramobs:9405", **labels}
            if m.type == "histogram":
                for i, le in enumerate(("0.001", "0.01", "0.1", "1", "+Inf")):
                    out.append({"series": _selector(m.name + "_bucket", {**labels, "le": le}),
                                "values": f"0+{10 * min(i + 1, 4)}x40"})
                out.append({"series": _selector(m.name + "_sum", labels), "values": "0+1x40"})
                out.append({"series": _selector(m.name + "_count", labels), "values": "0+40x40"})
            elif m.type == "counter":
                out.append({"series": _selector(m.name, labels), "values": "0+60x40"})
            elif m.name == "vramobs_device_failed":
                out.append({"series": _selector(m.name, labels), "values": "0+0x40"})
            elif m.name.endswith(("_info", "_up")):
                out.append({"series": _selector(m.name, labels), "values": "1+0x40"})
            else:
                out.append({"series": _selector(m.name, labels), "values": "1048576+1024x40"})
    out.append({"series": 'up{job="vramobs",instance="vramobs:9405"}', "values": "1+0x40"})
    if with_dcgm:
        out.append({"series": _selector("DCGM_FI_DEV_FB_USED", {
            "job": "dcgm", "instance": "dcgm-exporter:9400", "gpu": "0", "UUID": UUID0,
            "device": "nvidia0", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node"}),
            "values": "2048+0x40"})
    return out


@pytest.mark.parametrize("with_dcgm", [False, True], ids=["without_dcgm", "with_dcgm"])
def test_dashboard_panels_show_data(tmp_path, with_dcgm):
    """Every query returns series against a healthy exporter's data; without dcgm-exporter
    only the DCGM row's DCGM queries come back empty."""
    promtool = require("promtool", "prometheus")
    exprs = _dashboard_exprs()
    _write_rules(tmp_path / "panels.rules.yml",
                 [(name, f"count(({expr})) > 0") for name, expr, _ in exprs], "alert")
    checks = [{"eval_time": "30m", "alertname": name,
               "exp_alerts": [{"exp_labels": {}}] if with_dcgm or not needs_dcgm else []}
              for name, _, needs_dcgm in exprs]
    (tmp_path / "panels.test.yml").write_text(json.dumps({
        "rule_files": ["panels.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": synthetic_series(with_dcgm),
                   "alert_rule_test": checks}],
    }, indent=1))
    done = run([promtool, "test", "rules", "panels.test.yml"], cwd=tmp_path)
    titles = {f"panel_{p['id']}_{t.get('refId')}": p["title"] for p, t in dashboard_targets(dashboard())}
    assert done.returncode == 0, (
        f"panel queries without the data they should show (rule name = panel_<id>_<refId>; "
        f"{titles}):\n{done.stdout}{done.stderr}")


def test_grafana_provisioning():
    datasources = load_yaml(DATASOURCES)["datasources"]
    assert len(datasources) == 1
    ds = datasources[0]
    assert (ds["name"], ds["uid"], ds["type"]) == ("Prometheus", "prometheus", "prometheus")
    assert ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ------------------------------------------------------------------------------- compose


def _ports(service: dict, key: str) -> set[str]:
    """The published (key="published") or container (key="target") ports of a service."""
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add(str(p.get(key)))
        else:  # "HOST:CONTAINER" or "CONTAINER"
            parts = str(p).split(":")
            out.add(parts[0] if key == "published" else parts[-1])
    return out


def test_docker_compose_config():
    compose = require("docker-compose", "docker-compose")
    done = run([compose, "-f", str(COMPOSE), "config", "-q"])
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([compose, "-f", str(COMPOSE), "config"])
    assert done.returncode == 0, done.stdout + done.stderr
    services = load_yaml_text(done.stdout)["services"]
    assert set(services) >= {"vramobs", "prometheus", "grafana"}

    def mounts(service: str) -> dict[str, str]:
        """container path -> host path (as docker-compose resolved it), all read-only."""
        out = {}
        for volume in services[service].get("volumes", []):
            host, container, *mode = volume.split(":") if isinstance(volume, str) else (
                volume["source"], volume["target"], "ro" if volume.get("read_only") else "rw")
            assert mode and mode[0] == "ro", f"{service}: {volume} is not read-only"
            assert Path(host).exists(), f"{service}: {host} does not exist"
            out[container] = str(Path(host).resolve())
        return out

    vramobs = services["vramobs"]
    assert vramobs["image"].startswith("python:3.12-slim")
    assert mounts("vramobs")["/src"] == str(REPO)
    command = " ".join(vramobs["command"]) if isinstance(vramobs["command"], list) else vramobs["command"]
    assert "pip install" in command and "/src" in command
    assert re.search(r"vramobs demo\b.*--port 9405\b", command), command
    devices = vramobs["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == "all" and "gpu" in d["capabilities"]
               for d in devices)
    health = " ".join(vramobs["healthcheck"]["test"])
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert "9405" in _ports(vramobs, "target")

    prometheus_mounts = mounts("prometheus")
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS_YML)
    assert prometheus_mounts["/etc/prometheus/rules"] == str(RULES_DIR)
    assert services["prometheus"]["image"].split(":")[0] == "prom/prometheus"

    grafana = services["grafana"]
    assert grafana["image"].split(":")[0] == "grafana/grafana"
    grafana_mounts = mounts("grafana")
    assert grafana_mounts["/etc/grafana/provisioning"] == str(REPO / "dashboards" / "provisioning")
    assert grafana_mounts["/var/lib/grafana/dashboards/vramobs.json"] == str(DASHBOARD)
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "3000" in _ports(grafana, "published")
    assert "9090" in _ports(services["prometheus"], "published")
