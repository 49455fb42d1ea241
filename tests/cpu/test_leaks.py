"""Leak tracking (vramobs/leaks.py): where live buffers were allocated, leak_report,
leak_check, track_stacks, and buffers garbage-collected while open."""

import os
import random
import sys
import warnings

import pytest

import vramobs
from vramobs import leaks, stats
from vramobs.leaks import LeakError, leak_check, leak_report, track_stacks

HERE = os.path.abspath(__file__)


def line():
    """The caller's current line number."""
    return sys._getframe(1).f_lineno


@pytest.fixture
def sysrand():
    seed = int.from_bytes(os.urandom(8), "little")
    print(f"random seed: {seed}")
    return random.Random(seed)


@pytest.fixture
def depth_one():
    yield
    track_stacks(1)


def site(lineno, function):
    return f"{HERE}:{lineno} in {function}"


def mine(rows, generations):
    return [b for b in rows if b.generation in generations]


def test_leak_report_lists_live_buffers_largest_and_oldest_first(sysrand):
    before = {a.generation for a in stats.live_allocations()}
    count = sysrand.randrange(3, 8)
    sizes = sysrand.sample(range(1, 1 << 20), count)  # distinct sizes: an unambiguous order
    buffers, lines = [], []
    for n in sizes:
        if sysrand.random() < 0.5:
            buffers.append(vramobs.alloc(n, tag="weights")); lines.append(line())  # noqa: E702
        else:
            buffers.append(vramobs.to_device(os.urandom(n))); lines.append(line())  # noqa: E702
    try:
        generations = {b.generation for b in buffers}
        report = leak_report(limit=len(before) + count)
        assert report.live_count == len(before) + count
        assert report.live_bytes == stats.registry_stats().live_bytes
        largest = mine(report.largest, generations)
        oldest = mine(report.oldest, generations)
        by_size = sorted(zip(sizes, buffers, lines), key=lambda t: -t[0])
        assert [b.nbytes for b in largest] == [n for n, _, _ in by_size]
        assert [b.generation for b in largest] == [buf.generation for _, buf, _ in by_size]
        assert [b.generation for b in oldest] == [buf.generation for buf in buffers]
        assert [b.nbytes for b in oldest] == sizes
        ages = [b.age_seconds for b in oldest]
        assert ages == sorted(ages, reverse=True) and ages[-1] >= 0
        for b, buf, lineno in zip(oldest, buffers, lines):
            assert b.allocated_at == site(lineno, "test_leak_report_lists_live_buffers_largest_and_oldest_first")
            assert b.device == 0
            assert b.tag == buf.tag
        # The whole report, largest first, fits within its limit.
        all_sizes = [b.nbytes for b in report.largest]
        assert all_sizes == sorted(all_sizes, reverse=True)
        text = str(report)
        assert text.splitlines()[0] == f"{report.live_count} live allocations, {report.live_bytes} bytes"
        assert f"{HERE}:{lines[0]} in " in text
        # limit cuts both lists.
        short = leak_report(limit=2)
        assert len(short.largest) == len(short.oldest) == 2
        assert short.live_count == report.live_count
        assert [b.nbytes for b in short.largest] == [b.nbytes for b in report.largest[:2]]
    finally:
        for buf in buffers:
            buf.close()
    after = leak_report(limit=1000)
    assert not mine(after.largest, generations) and not mine(after.oldest, generations)
    assert after.live_count == len(before)


def test_leak_report_per_device(run_python):
    result = run_python(
        """
        import vramobs
        from vramobs import leaks
        a = vramobs.alloc(100, device=0)
        b = vramobs.alloc(200, device=1)
        c = vramobs.alloc(300, device=1)
        r = leaks.leak_report(device=1)
        print(r.live_count, r.live_bytes, [x.nbytes for x in r.largest], sorted({x.device for x in r.oldest}))
        for x in (a, b, c):
            x.close()
        """,
        env={"VRAMOBS_BACKEND": "host", "VRAMOBS_HOST_DEVICES": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 500 [300, 200] [1]"


def _inner(n):
    return vramobs.alloc(n), line() - 0


def _middle(n):
    buf, inner_line = _inner(n)
    return buf, inner_line, line() - 1


def test_track_stacks_captures_frames(depth_one, sysrand):
    n = sysrand.randrange(1, 1 << 16)
    track_stacks(3)
    buf, inner_line, middle_line = _middle(n); outer_line = line()  # noqa: E702
    try:
        (entry,) = [b for b in leak_report(limit=10_000).oldest if b.generation == buf.generation]
        frames = entry.allocated_at.split("; ")
        assert frames == [
            site(inner_line, "_inner"),
            site(middle_line, "_middle"),
            site(outer_line, "test_track_stacks_captures_frames"),
        ]
    finally:
        buf.close()
    track_stacks(1)
    with vramobs.alloc(n) as buf:
        lineno = line() - 1
        (entry,) = [b for b in leak_report(limit=10_000).oldest if b.generation == buf.generation]
        assert entry.allocated_at == site(lineno, "test_track_stacks_captures_frames")


@pytest.mark.parametrize("depth", [0, -1, 1.5, "2", None])
def test_track_stacks_refuses_bad_depths(depth_one, depth):
    with pytest.raises(ValueError):
        track_stacks(depth)


def test_leak_check_passes_for_a_clean_block(sysrand):
    outside = vramobs.alloc(sysrand.randrange(1, 4096))  # live before: not the block's leak
    try:
        with leak_check():
            for _ in range(sysrand.randrange(1, 5)):
                with vramobs.alloc(sysrand.randrange(1, 1 << 16)):
                    pass
            vramobs.alloc(10).close()
    finally:
        outside.close()


def test_leak_check_raises_listing_the_leaked_buffer(sysrand):
    n = sysrand.randrange(1, 1 << 20)
    kept = []
    with pytest.raises(LeakError) as info:
        with leak_check():
            with vramobs.alloc(64):
                pass
            kept.append(vramobs.alloc(n, tag="kv_cache")); lineno = line()  # noqa: E702
    (buf,) = kept
    try:
        assert isinstance(info.value, AssertionError)
        (leaked,) = info.value.leaked
        assert (leaked.nbytes, leaked.generation, leaked.tag, leaked.device) == (n, buf.generation, "kv_cache", 0)
        where = site(lineno, "test_leak_check_raises_listing_the_leaked_buffer")
        assert leaked.allocated_at == where
        message = str(info.value)
        assert message.splitlines()[0] == "1 allocations left live:"
        assert f"{n} bytes on device 0, tag kv_cache: {where}" in message
    finally:
        buf.close()


def test_leak_check_does_not_hide_the_blocks_own_exception():
    with pytest.raises(KeyError):
        with leak_check():
            with vramobs.alloc(100):
                raise KeyError("inner")


def test_buffer_collected_open_is_counted_and_warned(sysrand):
    n = sysrand.randrange(1, 1 << 20)
    before = leaks.counts().get(0, (0, 0))
    live = stats.registry_stats().live_count
    buf = vramobs.alloc(n); lineno = line()  # noqa: E702
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del buf
    after = leaks.counts().get(0, (0, 0))
    assert (after[0] - before[0], after[1] - before[1]) == (1, n)
    assert stats.registry_stats().live_count == live  # freed when collected
    mine = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    message = str(mine[0].message)
    where = site(lineno, "test_buffer_collected_open_is_counted_and_warned")
    assert message == (
        f"DeviceBuffer of {n} bytes on device 0 was garbage-collected without close(); "
        f"allocated at {where}"
    )


def test_closed_buffer_collected_is_not_a_leak(sysrand):
    before = leaks.counts().get(0, (0, 0))
    buf = vramobs.alloc(sysrand.randrange(1, 4096))
    buf.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del buf
    assert leaks.counts().get(0, (0, 0)) == before
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_buffers_live_at_exit_are_neither_freed_nor_warned(run_python):
    result = run_python(
        """
        import warnings
        warnings.simplefilter("always")
        import vramobs
        weights = vramobs.alloc(12345)
        print("ok")
        """,
        env={"VRAMOBS_BACKEND": "host"},
    )
    assert result.returncode == 0
    assert result.stdout == "ok\n"
    assert "ResourceWarning" not in result.stderr and "Exception ignored" not in result.stderr
