"""Wipe on free: the memory of a freed buffer is zeroed first, timed and counted as "wipe";
a wipe that fails keeps the allocation live."""

import os

import pytest

import vramobs
from vramobs import stats


@pytest.fixture
def wipe_policy():
    before = vramobs.wipe_on_free()
    yield vramobs.set_wipe_on_free
    vramobs.set_wipe_on_free(before)


def test_off_by_default_and_counted_when_on(wipe_policy):
    assert vramobs.wipe_on_free() is False
    wipe_policy(True)
    before = stats.op_stats(0)["wipe"]
    n = 5000 + int.from_bytes(os.urandom(2), "little")
    with vramobs.to_device(os.urandom(n)):
        pass
    with vramobs.to_device(os.urandom(n), wipe=False):  # per buffer, against the policy
        pass
    after = stats.op_stats(0)["wipe"]
    assert after.calls - before.calls == 1
    assert after.bytes_ok - before.bytes_ok == n
    assert after.latency_ok.count - before.latency_ok.count == 1


def test_per_buffer_wipe_with_the_policy_off(wipe_policy):
    wipe_policy(False)
    before = stats.op_stats(0)["wipe"].calls
    buf = vramobs.alloc(4096, wipe=True)
    buf.close()
    assert stats.op_stats(0)["wipe"].calls - before == 1


def test_the_memory_is_zero_before_the_driver_frees_it(child):
    """Make the driver's free fail after the wipe: the allocation stays live, and what it
    holds then is what the free would have released."""
    result = child(
        r"""
        vramobs.set_wipe_on_free(True)
        secret = os.urandom(1 << 20)
        buf = vramobs.to_device(secret)
        inject("cuMemFree", 1, nth=1)  # not sticky: the free fails, the entry stays
        try:
            buf.close()
        except vramobs.DriverError:
            pass
        check("still open", buf.closed, False)
        check("zeroed", buf.to_bytes() == bytes(len(secret)), True)
        check("wiped bytes", stats.op_stats()["wipe"].bytes_ok, len(secret))
        buf.close()
        finish()
        """
    )
    assert result == {}


def test_a_failed_wipe_keeps_the_allocation_live(child):
    result = child(
        r"""
        vramobs.set_wipe_on_free(True)
        buf = vramobs.to_device(os.urandom(70000))
        frees = calls("cuMemFree")
        inject("cuMemsetD8", 1, nth=1)  # CUDA_ERROR_INVALID_VALUE: not sticky
        try:
            buf.close()
            check("close raised", False, True)
        except vramobs.DriverError as exc:
            check("driver error", exc.driver_error_name, "CUDA_ERROR_INVALID_VALUE")
        check("no free after a failed wipe", calls("cuMemFree") - frees, 0)
        check("still open", buf.closed, False)
        check("still live", stats.registry_stats().live_count, 1)
        check("wipe counted as failed", by_status("wipe").get("VRAM_ERR_DRIVER", 0), 1)
        fake().fakecuda_reset()
        buf.close()
        check("freed once wiped", (buf.closed, stats.registry_stats().live_count), (True, 0))
        check("memset reached the driver", calls("cuMemsetD8") >= 2, True)
        finish()
        """
    )
    assert result == {}
