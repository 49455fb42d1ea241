"""Out-of-memory retry: hooks run, jittered backoff, bounded, counted; nothing else retried."""

import time

import pytest

import vramobs
from vramobs import retry

GIB = 1 << 30


@pytest.fixture
def policy():
    before = retry.policy()
    yield retry.configure
    retry.configure(**before.__dict__)


def test_a_hook_that_frees_memory_lets_the_retry_succeed(policy):
    policy(attempts=3, base_delay=0.001, max_total=1.0)
    hog = vramobs.alloc(6 * GIB)  # of the host backend's 8 GiB
    calls = []

    def release(nbytes, device):
        calls.append((nbytes, device))
        hog.close()

    retry.on_out_of_memory(release)
    before = retry.counts().get(0, (0, 0))
    try:
        with vramobs.alloc(4 * GIB, tag="kv_cache") as buf:
            assert buf.nbytes == 4 * GIB
    finally:
        retry.remove_hook(release)
    assert calls == [(4 * GIB, 0)]
    assert retry.counts()[0] == (before[0] + 1, before[1])


def test_without_relief_it_gives_up_after_its_attempts(policy):
    policy(attempts=4, base_delay=0.001, max_delay=0.004, max_total=1.0)
    calls = []
    hook = retry.on_out_of_memory(lambda nbytes, device: calls.append(nbytes))
    before = retry.counts().get(0, (0, 0))
    start = time.monotonic()
    try:
        with pytest.raises(vramobs.OutOfMemoryError):
            vramobs.alloc(9 * GIB)
    finally:
        retry.remove_hook(hook)
    assert time.monotonic() - start < 1.0  # bounded: 3 waits of at most 4 ms each
    assert calls == [9 * GIB] * 3
    assert retry.counts()[0] == (before[0] + 3, before[1] + 1)


def test_the_total_time_bound_stops_retries(policy):
    policy(attempts=50, base_delay=0.02, max_delay=0.02, max_total=0.03)
    before = retry.counts().get(0, (0, 0))
    with pytest.raises(vramobs.OutOfMemoryError):
        vramobs.alloc(9 * GIB)
    retried = retry.counts()[0][0] - before[0]
    assert 1 <= retried <= 3, retried


def test_only_out_of_memory_is_retried(policy):
    policy(attempts=5, base_delay=0.001)
    calls = []
    hook = retry.on_out_of_memory(lambda nbytes, device: calls.append(nbytes))
    try:
        with pytest.raises(vramobs.InvalidArgumentError):
            vramobs.alloc(0)
    finally:
        retry.remove_hook(hook)
    assert calls == []


def test_a_failing_hook_does_not_hide_the_outcome(policy):
    policy(attempts=2, base_delay=0.001)

    def broken(nbytes, device):
        raise RuntimeError("cache eviction failed")

    retry.on_out_of_memory(broken)
    try:
        with pytest.raises(vramobs.OutOfMemoryError):
            vramobs.alloc(9 * GIB)
    finally:
        retry.remove_hook(broken)


def test_off_by_default_and_policy_is_validated():
    assert retry.RetryPolicy().attempts == 1
    with pytest.raises(ValueError):
        retry.RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        retry.RetryPolicy(base_delay=-1)
