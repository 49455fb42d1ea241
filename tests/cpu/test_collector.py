"""The Prometheus collector (vramobs/collector.py) against exporters/METRICS.md.

Each test registers a VramCollector into a fresh CollectorRegistry and reads one scrape at a
time (a scrape is one ``registry.collect()``: every ``get_sample_value`` would be a scrape of
its own, and a scrape itself queries device memory). Values are checked as exact deltas
against operations made in the test, on the host backend. NVML's side needs devices with
``GPU-`` UUIDs, so it runs in a child on the real CUDA backend over the fake driver
(tests/fakecuda), with a stub NvmlReader supplying NVML's figures.
"""

import ctypes
import json
import logging
import os
import re
import shutil
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import vramobs
from vramobs import device, leaks, raw, stats, tags
from vramobs.collector import VramCollector
from vramobs.errors import DriverError
from vramobs.nvml import NvmlMemory, NvmlReader

from conftest import OPS


REPO = Path(__file__).resolve().parents[2]
METRICS_MD = REPO / "exporters" / "METRICS.md"
WORD = 1 << 64
ALIGNMENT = 256
INF = float("inf")



def round_up(n, a=ALIGNMENT):
    return -(-n // a) * a


class StubNvml(NvmlReader):
    """NVML's figures from a dict {uuid: NvmlMemory}; None for any other device."""

    def __init__(self, figures=None):
        super().__init__()
        self.figures = dict(figures or {})
        self.asked = []

    def memory(self, uuid):
        self.asked.append(uuid)
        return self.figures.get(uuid)


@pytest.fixture
def registry():
    """A fresh registry with a VramCollector whose NVML never answers."""
    reg = CollectorRegistry(auto_describe=False)
    VramCollector(reg, nvml=StubNvml())
    return reg


@pytest.fixture
def sysrand():
    import random

    seed = int.from_bytes(os.urandom(8), "little")
    print(f"random seed: {seed}")
    return random.Random(seed)


def scrape(registry):
    """One scrape: {(sample name, sorted label items): value}."""
    out = {}
    for family in registry.collect():
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(snapshot, name, **labels):
    return snapshot.get((name, tuple(sorted(labels.items()))))


def dev_labels(ordinal=0):
    return {"gpu": str(ordinal), "UUID": vramobs.device_info(ordinal).uuid}


def delta(after, before, name, **labels):
    a, b = value(after, name, **labels), value(before, name, **labels)
    assert a is not None, f"{name}{labels} missing after"
    assert b is not None, f"{name}{labels} missing before"
    return a - b


def host(data):
    """A ctypes host buffer holding data, and its address."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    return buf, ctypes.addressof(buf)


def families(text):
    """{family name: type} from the # TYPE lines of an exposition."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def sample_labels(text):
    """{family name: set of label-name frozensets} from the sample lines of an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        for s in family.samples:
            out.setdefault(name, set()).add(frozenset(set(s.labels) - {"le"}))
    return out


def documented():
    """{metric name: (type, labels, meaning)} parsed from the table in METRICS.md."""
    table = {}
    for line in METRICS_MD.read_text().splitlines():
        m = re.match(r"^\|\s*`(vramobs_\w+)`\s*\|([^|]*)\|([^|]*)\|(.*)\|\s*$", line)
        if m:
            name, kind, labels, meaning = m.groups()
            table[name] = (
                kind.strip().split()[0],
                frozenset(re.findall(r"`(\w+)`", labels)),
                meaning,
            )
    return table


def promtool_check(text):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian/Ubuntu: apt-get install prometheus)"
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Identity: build, devices.
# ---------------------------------------------------------------------------------------------


def test_build_info_and_device_series(registry):
    assert registry.get_sample_value(
        "vramobs_build_info", {"version": vramobs.__version__, "backend": "host"}
    ) == 1
    snap = scrape(registry)
    info = vramobs.device_info(0)
    assert info.uuid.startswith("HOST-")
    labels = {"gpu": "0", "UUID": info.uuid}
    assert value(
        snap,
        "vramobs_device_info",
        **labels,
        model_name=info.name,
        pci_bus_id=info.pci_bus_id,
        driver_version=str(info.driver_version),
    ) == 1
    assert info.name == "vramobs host emulation"
    assert value(snap, "vramobs_device_up", **labels) == 1
    assert value(snap, "vramobs_device_failed", **labels) == 0
    # One device (the host backend's default): no series for any other.
    uuids = {dict(k[1]).get("UUID") for k in snap} - {None}
    assert uuids == {info.uuid}
    assert {dict(k[1])["gpu"] for k in snap if "gpu" in dict(k[1])} == {"0"}
    builds = [k for k in snap if k[0] == "vramobs_build_info"]
    assert builds == [("vramobs_build_info", (("backend", "host"), ("version", vramobs.__version__)))]


def test_every_device_of_the_backend_is_published(run_python):
    """Devices are enumerated at scrape time: three host devices give three of each series."""
    result = run_python(
        """
        import json
        from prometheus_client import CollectorRegistry
        from vramobs.collector import VramCollector
        from vramobs.nvml import NvmlReader
        import vramobs

        class NoNvml(NvmlReader):
            def memory(self, uuid):
                return None

        reg = CollectorRegistry(auto_describe=False)
        VramCollector(reg, nvml=NoNvml())
        buf = vramobs.alloc(3000, device=2)
        rows = {}
        for family in reg.collect():
            for s in family.samples:
                if s.name in ("vramobs_device_up", "vramobs_live_bytes", "vramobs_device_info"):
                    rows.setdefault(s.name, []).append([s.labels["gpu"], s.labels["UUID"], s.value])
        buf.close()
        print(json.dumps(rows))
        """,
        env={"VRAMOBS_BACKEND": "host", "VRAMOBS_HOST_DEVICES": "3"},
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    uuids = [f"HOST-00000000-0000-0000-0000-{d:012d}" for d in range(3)]
    assert sorted(rows["vramobs_device_up"]) == [[str(d), uuids[d], 1] for d in range(3)]
    assert sorted(rows["vramobs_device_info"]) == [[str(d), uuids[d], 1] for d in range(3)]
    assert sorted(rows["vramobs_live_bytes"]) == [["0", uuids[0], 0], ["1", uuids[1], 0], ["2", uuids[2], 3000]]


# ---------------------------------------------------------------------------------------------
# Operations: calls by status, refusals by reason, durations.
# ---------------------------------------------------------------------------------------------


def test_operations_and_refusals_by_status_and_reason(registry, sysrand):
    labels = dev_labels()
    status_, free_bytes, total = raw.get_info()
    assert status_ == 0

    before_scrape = stats.op_stats(0)["get_info"].calls
    before = scrape(registry)
    scrape_get_info = stats.op_stats(0)["get_info"].calls - before_scrape  # the scrape's own query

    expected = Counter()  # (op, status label) -> calls
    refused = Counter()  # (op, reason) -> calls

    sizes = [sysrand.randrange(16, 1 << 16) for _ in range(sysrand.randrange(3, 9))]
    addresses = []
    for n in sizes:
        status, address = raw.malloc(n)
        assert status == 0
        addresses.append(address)
        expected["malloc", "success"] += 1
    first, n0 = addresses[0], sizes[0]
    data = os.urandom(n0)
    src_buf, src = host(data)
    dst_buf, dst = host(os.urandom(n0))

    h2d = sysrand.randrange(1, 6)
    for _ in range(h2d):
        assert raw.memcpy_h2d(first, src, n0) == 0
    expected["memcpy_h2d", "success"] += h2d
    d2h = sysrand.randrange(1, 6)
    for _ in range(d2h):
        assert raw.memcpy_d2h(dst, first, n0) == 0
    expected["memcpy_d2h", "success"] += d2h
    assert dst_buf.raw == data

    # Refusals, one of each that the host backend can produce.
    assert raw.malloc(0) == (2, 0)
    expected["malloc", "invalid_parameters"] += 1
    refused["malloc", "zero_size"] += 1
    assert raw.malloc(WORD - 1) == (2, 0)
    expected["malloc", "invalid_parameters"] += 1
    refused["malloc", "size_overflow"] += 1
    assert raw.memcpy_h2d(0, src, 16) == 2
    expected["memcpy_h2d", "invalid_parameters"] += 1
    refused["memcpy_h2d", "null_pointer"] += 1
    assert raw.memcpy_d2h(dst, first, 0) == 2
    expected["memcpy_d2h", "invalid_parameters"] += 1
    refused["memcpy_d2h", "zero_size"] += 1
    assert raw.memcpy_d2h(dst, WORD - 16, 17) == 2
    expected["memcpy_d2h", "invalid_parameters"] += 1
    refused["memcpy_d2h", "range_wrap"] += 1
    assert raw.memcpy_h2d(first + 1, src, n0) == 6
    expected["memcpy_h2d", "out_of_bounds"] += 1
    refused["memcpy_h2d", "out_of_bounds"] += 1
    assert raw.free(0xDEAD0000) == 5
    expected["free", "unknown_pointer"] += 1
    refused["free", "unknown_pointer"] += 1
    assert raw.free(first + 1) == 7
    expected["free", "interior_pointer"] += 1
    refused["free", "interior_pointer"] += 1
    assert raw.malloc(total + 1) == (1, 0)  # reaches the backend: a failure, not a refusal
    expected["malloc", "allocation_failed"] += 1

    for address in addresses:
        assert raw.free(address) == 0
        expected["free", "success"] += 1
    assert raw.memcpy_d2h(dst, first, 16) == 5
    expected["memcpy_d2h", "unknown_pointer"] += 1
    refused["memcpy_d2h", "freed_pointer"] += 1
    assert raw.free(first) == 0  # already freed: a success, counted as a repeat
    expected["free", "success"] += 1

    infos = sysrand.randrange(1, 5)
    for _ in range(infos):
        assert raw.get_info()[0] == 0
    expected["get_info", "success"] += infos + scrape_get_info

    after = scrape(registry)
    statuses = {dict(k[1])["status"] for k in after if k[0] == "vramobs_operations_total"}
    reasons = {dict(k[1])["reason"] for k in after if k[0] == "vramobs_refused_total"}
    for op in OPS:
        for status in statuses:
            got = delta(after, before, "vramobs_operations_total", **labels, op=op, status=status)
            assert got == expected[op, status], (op, status)
        for reason in reasons:
            got = delta(after, before, "vramobs_refused_total", **labels, op=op, reason=reason)
            assert got == refused[op, reason], (op, reason)
        # The duration histogram counts every call, by outcome.
        ok = expected[op, "success"]
        errors = sum(v for (o, s), v in expected.items() if o == op and s != "success")
        for outcome, count in (("success", ok), ("error", errors)):
            got = delta(after, before, "vramobs_operation_duration_seconds_count",
                        **labels, op=op, outcome=outcome)
            assert got == count, (op, outcome)


def test_status_and_reason_label_sets_are_the_documented_ones(registry):
    table = documented()
    doc_statuses = set(re.findall(r"`(\w+)`", table["vramobs_operations_total"][2].split(":", 1)[1]))
    doc_reasons = set(re.findall(r"`(\w+)`", table["vramobs_refused_total"][2].split(":", 1)[1]))
    doc_ops = set(re.findall(r"`(\w+)`", table["vramobs_operation_duration_seconds"][2].split("`op` in", 1)[1]))
    assert "success" in doc_statuses and "busy" in doc_statuses and len(doc_statuses) == 11
    assert "invalid_generation" in doc_reasons and "overlap" in doc_reasons
    assert len(doc_reasons) == 14
    assert doc_ops == set(OPS)
    snap = scrape(registry)
    op_status = {(dict(k[1])["op"], dict(k[1])["status"]) for k in snap if k[0] == "vramobs_operations_total"}
    op_reason = {(dict(k[1])["op"], dict(k[1])["reason"]) for k in snap if k[0] == "vramobs_refused_total"}
    # Every (op, status) and (op, reason) is published, zeros included.
    assert op_status == {(o, s) for o in doc_ops for s in doc_statuses}
    assert op_reason == {(o, r) for o in doc_ops for r in doc_reasons}
    outcomes = {
        (dict(k[1])["op"], dict(k[1])["outcome"])
        for k in snap
        if k[0] == "vramobs_operation_duration_seconds_count"
    }
    assert outcomes == {(o, x) for o in doc_ops for x in ("success", "error")}


def _histogram(snap, name, **labels):
    """[(le, cumulative count)] in exposition order (by bound), then _count and _sum."""
    buckets = []
    for (sample, items), v in snap.items():
        d = dict(items)
        if sample == name + "_bucket" and all(d.get(k) == w for k, w in labels.items()):
            buckets.append((float(d["le"]), v))
    buckets.sort()
    return buckets, value(snap, name + "_count", **labels), value(snap, name + "_sum", **labels)


def _check_histogram_shape(buckets, count):
    assert buckets, "no buckets"
    assert buckets[-1][0] == INF, "the last bucket is not +Inf"
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), f"buckets are not cumulative: {counts}"
    assert buckets[-1][1] == count


def test_duration_histogram_is_cumulative_and_ends_at_inf(registry, sysrand):
    labels = dev_labels()
    op_before = stats.op_stats(0)["malloc"]
    before = scrape(registry)
    n_ok = sysrand.randrange(5, 40)
    for _ in range(n_ok):
        status, address = raw.malloc(sysrand.randrange(1, 1 << 20))
        assert status == 0
        assert raw.free(address) == 0
    n_err = sysrand.randrange(1, 10)
    for _ in range(n_err):
        assert raw.malloc(0) == (2, 0)
    op_after = stats.op_stats(0)["malloc"]
    after = scrape(registry)

    for outcome, n, h_before, h_after in (
        ("success", n_ok, op_before.latency_ok, op_after.latency_ok),
        ("error", n_err, op_before.latency_error, op_after.latency_error),
    ):
        b0, c0, s0 = _histogram(before, "vramobs_operation_duration_seconds", **labels, op="malloc", outcome=outcome)
        b1, c1, s1 = _histogram(after, "vramobs_operation_duration_seconds", **labels, op="malloc", outcome=outcome)
        _check_histogram_shape(b0, c0)
        _check_histogram_shape(b1, c1)
        assert [le for le, _ in b1] == [le for le, _ in b0]
        assert c1 - c0 == n
        # The buckets are C's (seconds), cumulated: the bounds and counts are stats' exactly.
        assert [le for le, _ in b1] == list(h_after.bounds)
        running, cumulative = 0, []
        for c in h_after.counts:
            running += c
            cumulative.append(running)
        assert [c for _, c in b1] == cumulative
        assert s1 == pytest.approx(h_after.total, rel=1e-12, abs=0)
        assert s1 - s0 == pytest.approx(h_after.total - h_before.total, rel=1e-9, abs=1e-12)
        assert s1 - s0 > 0
        # The increments land in buckets whose deltas add up to the count.
        increments = [(c1_ - c0_) for (_, c1_), (_, c0_) in zip(b1, b0)]
        assert increments[-1] == n and all(i >= 0 for i in increments)
        assert all(increments[i] <= increments[i + 1] for i in range(len(increments) - 1))
        # Bounds are powers of two nanoseconds from 128 ns.
        assert b1[0][0] == pytest.approx(128e-9)


def test_copy_bytes_seconds_and_bandwidth_by_direction(registry, sysrand):
    labels = dev_labels()
    n = sysrand.randrange(4096, 1 << 20)
    data = os.urandom(n)
    before_h2d = stats.op_stats(0)["memcpy_h2d"]
    before_d2h = stats.op_stats(0)["memcpy_d2h"]
    before = scrape(registry)
    copied = {"h2d": 0, "d2h": 0}
    copies = {"h2d": 0, "d2h": 0}
    with vramobs.alloc(n) as buf:
        for _ in range(sysrand.randrange(1, 6)):
            length = sysrand.randrange(1, n + 1)
            offset = sysrand.randrange(0, n - length + 1)
            buf.copy_from(data[:length], offset=offset)
            copied["h2d"] += length
            copies["h2d"] += 1
        for _ in range(sysrand.randrange(1, 6)):
            length = sysrand.randrange(1, n + 1)
            offset = sysrand.randrange(0, n - length + 1)
            buf.to_bytes(offset, length)
            copied["d2h"] += length
            copies["d2h"] += 1
        with pytest.raises(vramobs.OutOfBoundsError):  # refused in Python: never counted
            buf.copy_from(data[:2], offset=n - 1)
        two, two_address = host(b"ab")
        assert raw.memcpy_h2d(buf.ptr + n - 1, two_address, 2) == 6  # refused in C: no bytes
    after = scrape(registry)
    after_h2d = stats.op_stats(0)["memcpy_h2d"]
    after_d2h = stats.op_stats(0)["memcpy_d2h"]
    for direction, op_b, op_a in (("h2d", before_h2d, after_h2d), ("d2h", before_d2h, after_d2h)):
        assert delta(after, before, "vramobs_copy_bytes_total", **labels, direction=direction) == copied[direction]
        seconds = delta(after, before, "vramobs_copy_seconds_total", **labels, direction=direction)
        assert seconds > 0
        assert seconds == pytest.approx(op_a.latency_ok.total - op_b.latency_ok.total, rel=1e-9)
        # The copy-seconds counter is the success duration histogram's sum for the same op.
        op = "memcpy_" + direction
        assert value(after, "vramobs_copy_seconds_total", **labels, direction=direction) == value(
            after, "vramobs_operation_duration_seconds_sum", **labels, op=op, outcome="success"
        )
        assert delta(after, before, "vramobs_copy_bandwidth_bytes_per_second_count",
                     **labels, direction=direction) == copies[direction]
        assert delta(after, before, "vramobs_copy_bandwidth_bytes_per_second_sum",
                     **labels, direction=direction) > 0
        buckets, count, _ = _histogram(after, "vramobs_copy_bandwidth_bytes_per_second", **labels, direction=direction)
        _check_histogram_shape(buckets, count)
        assert buckets[0][0] == 1 << 20  # from 1 MiB/s, doubling
        assert all(b2[0] == 2 * b1[0] for b1, b2 in zip(buckets, buckets[1:-1]))
    directions = {dict(k[1])["direction"] for k in after if k[0] == "vramobs_copy_bytes_total"}
    assert directions == {"h2d", "d2h", "d2d", "p2p", "staged"}


def test_allocation_size_buckets(registry, sysrand):
    labels = dev_labels()
    # Sizes at, just below and just above bucket bounds (256 B, x4), and random ones.
    sizes = [1, 255, 256, 257, 1024, 1025, 4096, 4097, 65536, 1 << 20, (1 << 20) + 1]
    sizes += [sysrand.randrange(1, 1 << 22) for _ in range(8)]
    sysrand.shuffle(sizes)
    before = scrape(registry)
    buffers = [vramobs.alloc(n) for n in sizes]
    after = scrape(registry)
    for buf in buffers:
        buf.close()
    b0, c0, s0 = _histogram(before, "vramobs_allocation_size_bytes", **labels)
    b1, c1, s1 = _histogram(after, "vramobs_allocation_size_bytes", **labels)
    _check_histogram_shape(b1, c1)
    bounds = [le for le, _ in b1]
    assert bounds[:4] == [256, 1024, 4096, 16384]
    assert c1 - c0 == len(sizes)
    assert s1 - s0 == sum(sizes)
    for (le, now), (_, then) in zip(b1, b0):
        assert now - then == sum(1 for n in sizes if n <= le), f"le={le}"


# ---------------------------------------------------------------------------------------------
# The registry: live, peak, waste, age, totals, tags, leaks.
# ---------------------------------------------------------------------------------------------


def test_live_peak_waste_and_lifetime_totals(registry, sysrand):
    labels = dev_labels()
    before = scrape(registry)
    live0 = value(before, "vramobs_live_bytes", **labels)
    peak0 = value(before, "vramobs_peak_live_bytes", **labels)
    assert live0 == stats.registry_stats(0).live_bytes
    sizes = [sysrand.randrange(1, 1 << 20) for _ in range(sysrand.randrange(2, 12))]
    addresses = []
    for n in sizes:
        status, address = raw.malloc(n)
        assert status == 0
        addresses.append(address)
    during = scrape(registry)
    assert delta(during, before, "vramobs_live_allocations", **labels) == len(sizes)
    assert delta(during, before, "vramobs_live_bytes", **labels) == sum(sizes)
    assert delta(during, before, "vramobs_allocation_waste_bytes", **labels) == sum(
        round_up(n) - n for n in sizes
    )
    assert value(during, "vramobs_peak_live_bytes", **labels) == max(peak0, live0 + sum(sizes))
    assert delta(during, before, "vramobs_allocations_total", **labels) == len(sizes)
    assert delta(during, before, "vramobs_frees_total", **labels) == 0

    freed = sysrand.randrange(1, len(sizes) + 1)
    for address in addresses[:freed]:
        assert raw.free(address) == 0
    repeats = sysrand.randrange(1, 4)
    for _ in range(repeats):
        assert raw.free(addresses[0]) == 0  # already freed: a harmless no-op, counted
    assert raw.free(0) == 0  # NULL: a no-op that is neither a free nor a repeat
    mid = scrape(registry)
    assert delta(mid, before, "vramobs_live_allocations", **labels) == len(sizes) - freed
    assert delta(mid, before, "vramobs_live_bytes", **labels) == sum(sizes[freed:])
    assert value(mid, "vramobs_peak_live_bytes", **labels) == max(peak0, live0 + sum(sizes))
    assert delta(mid, before, "vramobs_frees_total", **labels) == freed
    assert delta(mid, before, "vramobs_repeated_frees_total", **labels) == repeats
    assert delta(mid, before, "vramobs_lost_allocations_total", **labels) == 0

    for address in addresses[freed:]:
        assert raw.free(address) == 0
    after = scrape(registry)
    for name in ("vramobs_live_allocations", "vramobs_live_bytes", "vramobs_allocation_waste_bytes"):
        assert delta(after, before, name, **labels) == 0, name
    assert delta(after, before, "vramobs_frees_total", **labels) == len(sizes)


def test_oldest_allocation_age(registry):
    labels = dev_labels()
    assert stats.registry_stats().live_count == 0, "this test needs no live allocation at its start"
    assert value(scrape(registry), "vramobs_oldest_allocation_age_seconds", **labels) == 0
    start = time.monotonic()
    old = vramobs.alloc(100)
    time.sleep(0.05)
    young_start = time.monotonic()
    young = vramobs.alloc(200)
    old_age = value(scrape(registry), "vramobs_oldest_allocation_age_seconds", **labels)
    assert 0.05 <= old_age <= time.monotonic() - start
    old.close()  # the oldest is now the young one
    young_age = value(scrape(registry), "vramobs_oldest_allocation_age_seconds", **labels)
    assert 0 < young_age <= time.monotonic() - young_start
    assert young_age < old_age
    young.close()
    assert value(scrape(registry), "vramobs_oldest_allocation_age_seconds", **labels) == 0


def test_tag_series_per_declared_tag(registry, sysrand):
    labels = dev_labels()
    fresh = f"collector_{os.urandom(4).hex()}"
    tags.declare(fresh)  # declared, never used: its series are present, at zero
    before = scrape(registry)
    for tag in tags.declared():
        assert value(before, "vramobs_tag_live_bytes", **labels, tag=tag) is not None, tag
        assert value(before, "vramobs_tag_live_allocations", **labels, tag=tag) is not None, tag
    assert value(before, "vramobs_tag_live_bytes", **labels, tag=fresh) == 0
    assert value(before, "vramobs_tag_live_allocations", **labels, tag=fresh) == 0
    published = {dict(k[1])["tag"] for k in before if k[0] == "vramobs_tag_live_bytes"}
    assert published == set(tags.declared())

    plan = {"weights": [], "kv_cache": [], None: []}
    for tag in ("weights", "kv_cache"):
        tags.declare(tag)
    before = scrape(registry)
    buffers = []
    for tag in plan:
        for _ in range(sysrand.randrange(1, 5)):
            n = sysrand.randrange(1, 1 << 18)
            plan[tag].append(n)
            buffers.append(vramobs.alloc(n, tag=tag))
    during = scrape(registry)
    for tag, sizes in plan.items():
        name = tag or "untagged"
        assert delta(during, before, "vramobs_tag_live_bytes", **labels, tag=name) == sum(sizes)
        assert delta(during, before, "vramobs_tag_live_allocations", **labels, tag=name) == len(sizes)
    assert value(during, "vramobs_tag_live_bytes", **labels, tag=fresh) == 0
    # Tags partition the live allocations.
    tagged = sum(v for k, v in during.items() if k[0] == "vramobs_tag_live_bytes")
    assert tagged == value(during, "vramobs_live_bytes", **labels)
    for buf in buffers:
        buf.close()
    after = scrape(registry)
    for tag in plan:
        assert delta(after, before, "vramobs_tag_live_bytes", **labels, tag=tag or "untagged") == 0


def test_leaked_buffers_after_garbage_collection(registry, sysrand):
    labels = dev_labels()
    n = sysrand.randrange(1, 1 << 20)
    before = scrape(registry)
    buf = vramobs.alloc(n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del buf  # the last reference: collected now
    assert [w.category for w in caught] == [ResourceWarning]
    after = scrape(registry)
    assert delta(after, before, "vramobs_leaked_buffers_total", **labels) == 1
    assert delta(after, before, "vramobs_leaked_bytes_total", **labels) == n
    assert delta(after, before, "vramobs_frees_total", **labels) == 1  # freed then
    assert delta(after, before, "vramobs_live_allocations", **labels) == 0
    buffers, nbytes = leaks.counts()[0]
    assert value(after, "vramobs_leaked_buffers_total", **labels) == buffers
    assert value(after, "vramobs_leaked_bytes_total", **labels) == nbytes


# ---------------------------------------------------------------------------------------------
# Device memory and NVML.
# ---------------------------------------------------------------------------------------------


def test_device_memory_from_cuda_equals_get_info(registry, sysrand):
    labels = dev_labels()
    n = sysrand.randrange(1, 1 << 24)
    with vramobs.alloc(n):
        info = vramobs.get_info()
        snap = scrape(registry)
        for state, expected in (("free", info.free), ("used", info.used), ("total", info.total)):
            assert value(snap, "vramobs_device_memory_bytes", **labels, source="cuda", state=state) == expected
    assert info.total == 8 << 30 and info.used >= round_up(n)
    sources = {dict(k[1])["source"] for k in snap if k[0] == "vramobs_device_memory_bytes"}
    assert sources == {"cuda"}


def test_without_nvml_there_is_no_nvml_series(sysrand):
    stub = StubNvml()  # NVML answers for no device
    reg = CollectorRegistry(auto_describe=False)
    VramCollector(reg, nvml=stub, max_age=0.0)
    with vramobs.alloc(sysrand.randrange(1, 4096)):
        snap = scrape(reg)
    assert value(snap, "vramobs_nvml_up") == 0
    present = {k[0] for k in snap}
    for name in ("vramobs_memory_discrepancy_bytes", "vramobs_process_memory_bytes",
                 "vramobs_unattributed_bytes", "vramobs_context_bytes"):
        assert name not in present
    assert not [k for k in snap if dict(k[1]).get("source") == "nvml"]
    assert value(snap, "vramobs_device_memory_bytes", **dev_labels(), source="cuda", state="total") == 8 << 30


# NvmlReader itself, over the real pynvml module with its driver calls replaced: the figures
# come from the test, every other name (constants, errors) is nvidia-ml-py's own.


@pytest.fixture
def fake_nvml(monkeypatch):
    """Replace pynvml's driver calls; returns the state the fakes answer from."""
    pynvml = pytest.importorskip("pynvml")
    from types import SimpleNamespace

    state = SimpleNamespace(
        calls=Counter(),
        init_error=None,
        devices={},  # uuid -> (index, total, free, used, reserved)
        processes={},  # uuid -> [(pid, usedGpuMemory)]
    )

    def counted(name, fn):
        def call(*args, **kwargs):
            state.calls[name] += 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(pynvml, name, call)

    def init():
        if state.init_error is not None:
            raise pynvml.NVMLError(state.init_error)

    def handle(uuid):
        if uuid not in state.devices:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return uuid

    def memory_info(h, version=None):
        assert version == pynvml.nvmlMemory_v2, "asks for v2 (with reserved)"
        index, total, free, used, reserved = state.devices[h]
        return SimpleNamespace(version=version, total=total, free=free, used=used, reserved=reserved)

    counted("nvmlInit", init)
    counted("nvmlDeviceGetHandleByUUID", handle)
    counted("nvmlDeviceGetMemoryInfo", memory_info)
    counted("nvmlDeviceGetIndex", lambda h: state.devices[h][0])
    counted(
        "nvmlDeviceGetComputeRunningProcesses",
        lambda h: [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in state.processes.get(h, [])],
    )
    return state


def _nvml_device(sysrand):
    total = sysrand.randrange(1, 200) * (1 << 30)
    free = sysrand.randrange(0, total)
    return (sysrand.randrange(0, 8), total, free, total - free, sysrand.randrange(0, 1 << 29))


def test_nvml_reader_reads_a_device_by_uuid(fake_nvml, sysrand):
    uuid = f"GPU-{os.urandom(16).hex()}"
    fake_nvml.devices[uuid] = figures = _nvml_device(sysrand)
    fake_nvml.processes[uuid] = [(os.getpid() + 1, 1 << 20)]  # another process only
    reader = NvmlReader()
    index, total, free, used, reserved = figures
    assert reader.memory(uuid) == NvmlMemory(index, total, free, used, reserved, None)
    assert reader.error is None
    assert reader.memory("GPU-unknown") is None  # a device NVML does not know: None, no raise


def test_nvml_reader_caches_for_max_age(fake_nvml, sysrand):
    uuid = f"GPU-{os.urandom(16).hex()}"
    fake_nvml.devices[uuid] = _nvml_device(sysrand)
    reader = NvmlReader(max_age=0.2)
    first = reader.memory(uuid)
    reads = fake_nvml.calls["nvmlDeviceGetMemoryInfo"]
    fake_nvml.devices[uuid] = _nvml_device(sysrand)
    assert reader.memory(uuid) == first  # within max_age: the cached reading
    assert fake_nvml.calls["nvmlDeviceGetMemoryInfo"] == reads
    time.sleep(0.25)
    assert reader.memory(uuid).total == fake_nvml.devices[uuid][1]
    assert fake_nvml.calls["nvmlDeviceGetMemoryInfo"] == reads + 1
    assert fake_nvml.calls["nvmlInit"] == 1


def test_nvml_reader_without_nvml(fake_nvml):
    import pynvml

    fake_nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    reader = NvmlReader(max_age=0)
    assert reader.memory("GPU-00000000-0000-0000-0000-000000000000") is None
    assert reader.error is not None and reader.error.startswith("NVML unavailable: ")


@pytest.mark.parametrize("used", [None, (1 << 64) - 1])
def test_nvml_reader_process_memory_not_available(fake_nvml, sysrand, used):
    """pynvml maps NVML_VALUE_NOT_AVAILABLE (WDDM, MIG) to None; a pynvml that does not
    passes the raw value, 2**64 - 1."""
    uuid = f"GPU-{os.urandom(16).hex()}"
    fake_nvml.devices[uuid] = figures = _nvml_device(sysrand)
    fake_nvml.processes[uuid] = [(os.getpid(), used)]
    assert NvmlReader().memory(uuid) == NvmlMemory(*figures, process_used=None)


def test_nvml_reader_reads_this_process_memory(fake_nvml, sysrand):
    """The figure of this process (NVML names processes by PID), not of another one."""
    uuid = f"GPU-{os.urandom(16).hex()}"
    fake_nvml.devices[uuid] = figures = _nvml_device(sysrand)
    used = sysrand.randrange(1, 1 << 34)
    fake_nvml.processes[uuid] = [(os.getpid() + 7, 999), (os.getpid(), used)]
    reading = NvmlReader().memory(uuid)
    assert reading == NvmlMemory(*figures, process_used=used)


NVML_CHILD = r"""
from prometheus_client import CollectorRegistry, generate_latest
from vramobs.collector import VramCollector
from vramobs.nvml import NvmlMemory, NvmlReader

rnd = random.Random(SEED)


class StubNvml(NvmlReader):
    def __init__(self):
        super().__init__()
        self.figures = {}

    def memory(self, uuid):
        return self.figures.get(uuid)


def samples(reg):
    out = {}
    for family in reg.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(snap, name, **labels):
    return snap.get((name, tuple(sorted(labels.items()))))


uuid = vramobs.device_info(0).uuid
check("uuid", uuid.startswith("GPU-"), True)
index = rnd.randrange(1, 8)
L = {"gpu": str(index), "UUID": uuid}

# Calibration: the context is NVML's process figure minus what vramobs tracks, at creation.
early = [vramobs.alloc(rnd.randrange(1, 1 << 16)) for _ in range(rnd.randrange(1, 4))]
tracked0 = stats.registry_stats(0).live_rounded_bytes
process0 = rnd.randrange(200, 400) * MiB
stub = StubNvml()
nv_total = rnd.randrange(1, 4) * GiB + rnd.randrange(0, MiB)
nv_reserved = rnd.randrange(1, 200) * MiB
nv_free = rnd.randrange(0, nv_total // 2)
stub.figures[uuid] = NvmlMemory(index=index, total=nv_total, free=nv_free, used=nv_total - nv_free,
                                reserved=nv_reserved, process_used=process0)
reg = CollectorRegistry(auto_describe=False)
VramCollector(reg, nvml=stub, max_age=0.0)
context = process0 - tracked0

late = [vramobs.alloc(rnd.randrange(1, 1 << 20)) for _ in range(rnd.randrange(1, 4))]
tracked1 = stats.registry_stats(0).live_rounded_bytes
check("tracked rounds to 256", tracked1, sum(round_up(b.nbytes, 256) for b in early + late))
process1 = process0 + rnd.randrange(0, 64) * MiB + 12345
stub.figures[uuid] = NvmlMemory(index=index, total=nv_total, free=nv_free, used=nv_total - nv_free,
                                reserved=nv_reserved, process_used=process1)
cuda = vramobs.get_info()
snap = samples(reg)
check("nvml_up", val(snap, "vramobs_nvml_up"), 1)
for state, v in (("free", nv_free), ("used", nv_total - nv_free), ("total", nv_total), ("reserved", nv_reserved)):
    check(f"nvml {state}", val(snap, "vramobs_device_memory_bytes", **L, source="nvml", state=state), v)
for state, v in (("free", cuda.free), ("used", cuda.used), ("total", cuda.total)):
    check(f"cuda {state}", val(snap, "vramobs_device_memory_bytes", **L, source="cuda", state=state), v)
check("no cuda reserved", val(snap, "vramobs_device_memory_bytes", **L, source="cuda", state="reserved"), None)
check("discrepancy total", val(snap, "vramobs_memory_discrepancy_bytes", **L, kind="total"),
      cuda.total - (nv_total - nv_reserved))
check("discrepancy free", val(snap, "vramobs_memory_discrepancy_bytes", **L, kind="free"), cuda.free - nv_free)
check("process", val(snap, "vramobs_process_memory_bytes", **L), process1)
check("context", val(snap, "vramobs_context_bytes", **L), context)
check("unattributed", val(snap, "vramobs_unattributed_bytes", **L), process1 - tracked1 - context)
gpus = {dict(k[1]).get("gpu") for k in snap} - {None}
check("every device series carries NVML's index", gpus, {str(index)})
check("device_up", val(snap, "vramobs_device_up", **L), 1)
check("live_bytes", val(snap, "vramobs_live_bytes", **L), sum(b.nbytes for b in early + late))
full_text = generate_latest(reg).decode()

# CUDA and NVML agreeing: both discrepancies are 0.
stub.figures[uuid] = NvmlMemory(index=index, total=cuda.total + nv_reserved, free=cuda.free,
                                used=cuda.total - cuda.free + nv_reserved, reserved=nv_reserved,
                                process_used=None)
snap = samples(reg)
check("agree: total", val(snap, "vramobs_memory_discrepancy_bytes", **L, kind="total"), 0)
check("agree: free", val(snap, "vramobs_memory_discrepancy_bytes", **L, kind="free"), 0)
# NVML cannot tell this process's usage: no process or unattributed series, the context stays.
check("no process series", [k for k in snap if k[0] == "vramobs_process_memory_bytes"], [])
check("no unattributed series", [k for k in snap if k[0] == "vramobs_unattributed_bytes"], [])
check("context without process figure", val(snap, "vramobs_context_bytes", **L), context)

# VRAMOBS_CONTEXT_BYTES overrides the measurement.
configured = rnd.randrange(1, 500) * MiB + 7
os.environ["VRAMOBS_CONTEXT_BYTES"] = str(configured)
stub.figures[uuid] = NvmlMemory(index=index, total=nv_total, free=nv_free, used=nv_total - nv_free,
                                reserved=nv_reserved, process_used=process1)
reg2 = CollectorRegistry(auto_describe=False)
VramCollector(reg2, nvml=stub, max_age=0.0)
snap = samples(reg2)
check("configured context", val(snap, "vramobs_context_bytes", **L), configured)
check("unattributed with configured context", val(snap, "vramobs_unattributed_bytes", **L),
      process1 - tracked1 - configured)
del os.environ["VRAMOBS_CONTEXT_BYTES"]

# NVML unavailable: nvml_up 0, no NVML series, gpu falls back to vramobs' ordinal.
stub.figures.clear()
snap = samples(reg)
check("nvml_up down", val(snap, "vramobs_nvml_up"), 0)
check("no nvml source", [k for k in snap if dict(k[1]).get("source") == "nvml"], [])
for name in ("vramobs_memory_discrepancy_bytes", "vramobs_process_memory_bytes",
             "vramobs_unattributed_bytes", "vramobs_context_bytes"):
    check(f"no {name}", [k for k in snap if k[0] == name], [])
check("gpu is the ordinal", {dict(k[1]).get("gpu") for k in snap} - {None}, {"0"})
check("cuda total still", val(snap, "vramobs_device_memory_bytes", gpu="0", UUID=uuid, source="cuda",
                              state="total"), cuda.total)

for b in early + late:
    b.close()
finish(text=full_text)
"""


def test_nvml_series_against_a_stub_on_the_cuda_backend(child):
    result = child(NVML_CHILD)
    text = result["text"]
    assert "vramobs_unattributed_bytes{" in text and 'source="nvml"' in text
    rc, out = promtool_check(text)
    assert (rc, out) == (0, "")


# ---------------------------------------------------------------------------------------------
# The exposition against the documentation and promtool.
# ---------------------------------------------------------------------------------------------


def test_promtool_accepts_the_exposition(registry, sysrand):
    buffers = [vramobs.alloc(sysrand.randrange(1, 1 << 20), tag=t) for t in ("weights", "kv_cache", None)]
    buffers[0].copy_from(os.urandom(100))
    buffers[0].to_bytes(0, 50)
    raw.malloc(0)
    text = generate_latest(registry).decode()
    for buf in buffers:
        buf.close()
    rc, out = promtool_check(text)
    assert (rc, out) == (0, "")


def test_promtool_rejects_a_broken_exposition():
    """The check above can fail: promtool flags a counter without _total."""
    rc, out = promtool_check("# HELP x_bytes a\n# TYPE x_bytes counter\nx_bytes 1\n")
    assert rc != 0 or out != ""


def _exposition_matches_documentation(text, table, *, require_all):
    exposed = families(text)
    labels = sample_labels(text)
    undocumented = set(exposed) - set(table)
    assert not undocumented, f"exposed but not documented in METRICS.md: {sorted(undocumented)}"
    if require_all:
        missing = set(table) - set(exposed)
        assert not missing, f"documented but not exposed: {sorted(missing)}"
    for name, kind in exposed.items():
        doc_kind, doc_labels, _ = table[name]
        assert kind == doc_kind, f"{name}: exposed as {kind}, documented as {doc_kind}"
        for found in labels.get(name, ()):
            assert found == doc_labels, f"{name}: labels {sorted(found)}, documented {sorted(doc_labels)}"


def test_every_metric_is_documented_and_every_documented_metric_is_exposed(registry, child):
    table = documented()
    assert len(table) >= 30 and "vramobs_build_info" in table and "vramobs_scrape_duration_seconds" in table
    with vramobs.alloc(1000):
        text = generate_latest(registry).decode()
    _exposition_matches_documentation(text, table, require_all=True)
    # The NVML families have samples only when NVML answers: check their labels there too.
    full = child(NVML_CHILD)["text"]
    _exposition_matches_documentation(full, table, require_all=True)
    labelled = sample_labels(full)
    assert set(table) - set(labelled) == set(), "families without a sample in the full exposition"


# ---------------------------------------------------------------------------------------------
# Robustness.
# ---------------------------------------------------------------------------------------------


def test_a_scrape_never_raises_when_a_device_query_fails(registry, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("device query exploded")

    monkeypatch.setattr(device, "device_info", broken)
    with caplog.at_level(logging.ERROR, logger="vramobs.collector"):
        names = [family.name for family in registry.collect()]
        text = generate_latest(registry).decode()
    assert names[0] == "vramobs_build_info" and names[-1] == "vramobs_scrape_duration_seconds"
    assert "vramobs_build_info{" in text and "vramobs_scrape_duration_seconds " in text
    assert any("collection failed" in r.getMessage() for r in caplog.records)


def test_a_failing_memory_query_leaves_the_rest_of_the_scrape(registry, monkeypatch):
    def broken(device=None):
        raise DriverError("cudaMemGetInfo failed")

    monkeypatch.setattr(device, "get_info", broken)
    with vramobs.alloc(777):
        snap = scrape(registry)
        labels = dev_labels()
        assert value(snap, "vramobs_live_bytes", **labels) == stats.registry_stats(0).live_bytes
    assert not [k for k in snap if k[0] == "vramobs_device_memory_bytes"]
    assert value(snap, "vramobs_device_up", **labels) == 1
    assert value(snap, "vramobs_nvml_up") == 0
    assert ("vramobs_scrape_duration_seconds", ()) in snap


def test_scrape_duration_is_published(registry):
    snap = scrape(registry)
    duration = value(snap, "vramobs_scrape_duration_seconds")
    assert duration is not None and 0 < duration < 60


def test_scrape_with_20000_live_allocations(registry):
    labels = dev_labels()
    before = scrape(registry)
    addresses = []
    try:
        for _ in range(20_000):
            status, address = raw.malloc(256)
            assert status == 0
            addresses.append(address)
        text = generate_latest(registry).decode()
        snap = scrape(registry)
    finally:
        for address in addresses:
            assert raw.free(address) == 0
    assert delta(snap, before, "vramobs_live_allocations", **labels) == 20_000
    assert delta(snap, before, "vramobs_live_bytes", **labels) == 20_000 * 256
    assert delta(snap, before, "vramobs_allocation_waste_bytes", **labels) == 0
    assert f'vramobs_live_allocations{{UUID="{labels["UUID"]}",gpu="0"}}' in text


def test_device_memory_query_is_cached_for_a_second(registry):
    calls = stats.op_stats(0)["get_info"].calls
    first = scrape(registry)
    with vramobs.alloc(1 << 20):
        second = scrape(registry)  # well within a second of the first: the same reading
    assert stats.op_stats(0)["get_info"].calls - calls == 1
    for state in ("free", "used", "total"):
        key = ("vramobs_device_memory_bytes", tuple(sorted({**dev_labels(), "source": "cuda", "state": state}.items())))
        assert second[key] == first[key]


def test_device_memory_reading_expires_after_max_age(sysrand):
    reg = CollectorRegistry(auto_describe=False)
    VramCollector(reg, nvml=StubNvml(), max_age=0.05)
    labels = dev_labels()
    calls = stats.op_stats(0)["get_info"].calls
    scrape(reg)
    time.sleep(0.06)
    n = sysrand.randrange(1, 1 << 20)
    with vramobs.alloc(n):
        info = vramobs.get_info()
        snap = scrape(reg)  # a fresh reading
    assert stats.op_stats(0)["get_info"].calls - calls == 3  # two scrapes and ours
    assert value(snap, "vramobs_device_memory_bytes", **labels, source="cuda", state="free") == info.free
