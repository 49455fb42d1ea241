import math
import os
import time
from collections import Counter

import numpy as np
import pytest

import vramobs
from vramobs import InvalidArgumentError, raw, stats

from conftest import OPS

OK = "VRAM_SUCCESS"


def bucket_of(bounds, value):
    return next(i for i, bound in enumerate(bounds) if value <= bound)


def one_hot(n, i):
    return tuple(1 if j == i else 0 for j in range(n))


def test_every_operation_is_reported():
    assert list(stats.op_stats()) == list(OPS)
    assert all(s.op == op for op, s in stats.op_stats().items())


def test_known_sequence_is_counted_exactly(op_watch, rng):
    nbytes = int(rng.integers(1, 1 << 22))
    data = np.frombuffer(os.urandom(nbytes), dtype=np.uint8)
    out = np.frombuffer(bytearray(os.urandom(nbytes)), dtype=np.uint8)
    size_bounds = stats.op_stats()["malloc"].size_ok.bounds
    watch = op_watch()

    status, address = raw.malloc(nbytes)
    assert status == 0
    assert raw.malloc(0) == (2, 0)
    assert raw.memcpy_h2d(address, data.ctypes.data, nbytes) == 0
    assert raw.memcpy_h2d(address + 1, data.ctypes.data, nbytes) == 6
    assert raw.memcpy_d2h(out.ctypes.data, address, nbytes) == 0
    assert raw.memcpy_d2h(0, address, nbytes) == 2
    assert raw.memcpy_d2h(out.ctypes.data, address, 0) == 2
    assert raw.free(address) == 0
    assert raw.free(address) == 0
    assert raw.free(0) == 0
    assert raw.get_info()[0] == 0
    assert out.tobytes() == data.tobytes()

    sized = one_hot(len(size_bounds), bucket_of(size_bounds, nbytes))
    none = one_hot(len(size_bounds), -1)
    expected = {
        "malloc": (2, {OK: 1, "VRAM_ERR_INVALID_PARAMETERS": 1}, {"zero_size": 1}, nbytes, sized),
        "memcpy_h2d": (2, {OK: 1, "VRAM_ERR_OUT_OF_BOUNDS": 1}, {"out_of_bounds": 1}, nbytes, sized),
        "memcpy_d2h": (
            3,
            {OK: 1, "VRAM_ERR_INVALID_PARAMETERS": 2},
            {"null_pointer": 1, "zero_size": 1},
            nbytes,
            sized,
        ),
        "free": (3, {OK: 3}, {}, nbytes, sized),
        "get_info": (1, {OK: 1}, {}, 0, none),
    }
    for op, (calls, by_status, refused, bytes_ok, size_ok) in expected.items():
        delta = watch(op)
        assert delta.calls == calls, op
        assert delta.by_status == Counter(by_status), op
        assert delta.refused == Counter(refused), op
        assert delta.bytes_ok == bytes_ok, op
        assert delta.size_ok == size_ok, op
        assert delta.latency_ok == by_status[OK], op
        assert delta.latency_error == calls - by_status[OK], op
        assert delta.latency_ok_sum > 0, op
        assert delta.bandwidth_ok == (1 if op.startswith("memcpy") else 0), op


@pytest.mark.parametrize(
    "nbytes, bucket", [(1, 0), (256, 0), (257, 1), (1024, 1), (1025, 2), (4096, 2), (4097, 3),
                       (1 << 20, 6), ((1 << 20) + 1, 7)]
)
def test_size_histogram_buckets(op_watch, nbytes, bucket):
    watch = op_watch()
    with vramobs.alloc(nbytes):
        pass
    assert watch("malloc").size_ok == one_hot(20, bucket)
    assert watch("free").size_ok == one_hot(20, bucket)


def test_histogram_bounds():
    s = stats.op_stats()["memcpy_h2d"]
    for histogram, n, first in (
        (s.latency_ok, 28, 128e-9),
        (s.latency_error, 28, 128e-9),
        (s.size_ok, 20, 256.0),
        (s.bandwidth_ok, 24, float(1 << 20)),
    ):
        assert len(histogram.bounds) == len(histogram.counts) == n
        assert histogram.bounds[0] == pytest.approx(first)
        assert all(a < b for a, b in zip(histogram.bounds, histogram.bounds[1:]))
        assert math.isinf(histogram.bounds[-1]) and not math.isinf(histogram.bounds[-2])
    assert s.size_ok.bounds[1] == 1024.0
    assert s.latency_ok.bounds[-2] == pytest.approx(2.0**33 / 1e9)


def summary(op_stats):
    return {
        op: (s.calls, s.by_status, s.refused, s.bytes_ok, s.size_ok.counts, s.latency_ok.counts)
        for op, s in op_stats.items()
    }


def test_single_device_totals_equal_device_zero():
    assert summary(stats.op_stats(0)) == summary(stats.op_stats(-1))
    with vramobs.alloc(100, tag="weights"):
        all_devices, device_zero = stats.registry_stats(), stats.registry_stats(0)
        assert (all_devices.live_count, all_devices.live_bytes, all_devices.by_tag) == (
            device_zero.live_count, device_zero.live_bytes, device_zero.by_tag
        )


def test_other_devices_count_nothing():
    assert all(s.calls == 0 for s in stats.op_stats(31).values())
    assert stats.registry_stats(31).allocs_total == 0
    assert stats.live_allocations(31) == []


@pytest.mark.parametrize("device", [32, -2])
def test_stats_of_impossible_devices_are_refused(device):
    for call in (stats.op_stats, stats.registry_stats, stats.live_allocations):
        with pytest.raises(InvalidArgumentError):
            call(device)


@pytest.mark.parametrize("device", [1 << 32, (1 << 32) - 1, 1 << 40])
def test_stats_of_devices_wider_than_c_int_are_refused(device):
    for call in (stats.op_stats, stats.registry_stats, stats.live_allocations):
        with pytest.raises(InvalidArgumentError):
            call(device)


def test_registry_counts_exact_deltas(rng):
    sizes = [int(n) for n in rng.integers(1, 100_000, size=3)]
    before = stats.registry_stats()
    buffers = [vramobs.alloc(n, tag=t) for n, t in zip(sizes, ["weights", "kv_cache", None])]
    during = stats.registry_stats()
    assert during.live_count - before.live_count == 3
    assert during.live_bytes - before.live_bytes == sum(sizes)
    assert during.live_rounded_bytes - before.live_rounded_bytes == sum(
        -(-n // 256) * 256 for n in sizes
    )
    assert during.allocs_total - before.allocs_total == 3
    assert during.by_tag["weights"][1] - before.by_tag.get("weights", (0, 0))[1] == sizes[0]
    assert during.by_tag["kv_cache"][1] - before.by_tag.get("kv_cache", (0, 0))[1] == sizes[1]
    assert during.oldest_age_seconds is not None and during.oldest_age_seconds > 0

    address = buffers[0].ptr
    assert raw.free(address) == 0
    assert raw.free(address) == 0
    for b in buffers:
        b.close()
    after = stats.registry_stats()
    assert after.live_count == before.live_count and after.live_bytes == before.live_bytes
    assert after.frees_total - before.frees_total == 3
    assert after.repeated_frees_total - before.repeated_frees_total == 2
    assert after.allocs_total - before.allocs_total == 3
    assert (after.lost_total, after.stale_evicted_total) == (
        before.lost_total, before.stale_evicted_total
    )
    assert after.by_tag == before.by_tag


def test_peak_bytes_is_the_high_water_mark(rng):
    before = stats.registry_stats()
    extra = int(rng.integers(1, 10_000))
    nbytes = before.peak_bytes - before.live_bytes + extra
    with vramobs.alloc(nbytes):
        assert stats.registry_stats().peak_bytes == before.peak_bytes + extra
    with vramobs.alloc(1):
        pass
    assert stats.registry_stats().peak_bytes == before.peak_bytes + extra


def test_oldest_age_is_none_without_live_allocations():
    with vramobs.alloc(10):
        assert stats.registry_stats().oldest_age_seconds > 0
    # Nothing is live between tests (conftest checks it).
    now = stats.registry_stats()
    assert (now.live_count, now.oldest_age_seconds) == (0, None)


def test_live_allocations_oldest_first(rng):
    sizes = [int(n) for n in rng.integers(1, 50_000, size=4)]
    tags = ["weights", None, "kv_cache", "weights"]
    known = {a.address for a in stats.live_allocations()}
    buffers = []
    for n, tag in zip(sizes, tags):
        buffers.append(vramobs.alloc(n, tag=tag))
        time.sleep(0.001)
    try:
        mine = [a for a in stats.live_allocations() if a.address not in known]
        assert [a.address for a in mine] == [b.ptr for b in buffers]
        assert [a.nbytes for a in mine] == sizes
        assert [a.tag for a in mine] == [t or "untagged" for t in tags]
        assert [a.generation for a in mine] == [b.generation for b in buffers]
        assert all(a.device == 0 for a in mine)
        ages = [a.age_seconds for a in mine]
        assert all(older > newer + 0.0009 for older, newer in zip(ages, ages[1:]))
        assert all(age > 0 for age in ages)
        assert [a.address for a in stats.live_allocations(0)] == [
            a.address for a in stats.live_allocations()
        ]
        first = stats.live_allocations(limit=len(known) + 2)
        assert [a.address for a in first[len(known):]] == [b.ptr for b in buffers[:2]]
        assert stats.live_allocations(limit=0) == []
    finally:
        for b in buffers:
            b.close()
    assert {a.address for a in stats.live_allocations()} == known
