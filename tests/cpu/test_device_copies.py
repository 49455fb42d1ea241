"""Copies between device allocations (within a device, peer to peer, staged through the host)
and migration between devices: the host backend in this process and in children with several
emulated devices, and the real CUDA backend over the fake driver with injected faults."""

import ctypes

import pytest

import vramobs
from vramobs import _native, stats


def d2d(dst: int, src: int, nbytes: int) -> int:
    return _native.lib().vram_memcpy_d2d(dst, src, nbytes)


def last_reason() -> str:
    info = _native.ErrorInfo()
    _native.lib().vram_last_error(ctypes.byref(info))
    return _native.lib().vram_reason_name(info.reason).decode()


def test_copy_within_a_device_at_odd_offsets(rng):
    data = rng.integers(1, 256, 100_003, dtype="u1").tobytes()
    before = stats.op_stats(0)["memcpy_d2d"]
    with vramobs.to_device(data) as src, vramobs.alloc(200_001) as dst:
        dst.copy_from(src, 7)
        assert dst.to_bytes(7, len(data)) == data
        dst.copy_from(src, 99_999, src_offset=333, nbytes=4_097)
        assert dst.to_bytes(99_999, 4_097) == data[333:4_430]
        assert dst.to_bytes(7, 99_992) == data[:99_992]  # the earlier bytes it did not touch
    after = stats.op_stats(0)["memcpy_d2d"]
    assert after.calls - before.calls == 2
    assert after.bytes_ok - before.bytes_ok == len(data) + 4_097
    assert vramobs.copy_path(0, 0) == "d2d"


def test_device_copy_refusals_name_their_reason(rng):
    with vramobs.alloc(4096) as a, vramobs.alloc(4096) as b:
        a.copy_from(rng.integers(1, 256, 4096, dtype="u1").tobytes())
        snapshot = b.to_bytes()
        cases = [
            ((b.ptr, a.ptr, 0), 2, "zero_size"),
            ((0, a.ptr, 16), 2, "null_pointer"),
            ((b.ptr, 0, 16), 2, "null_pointer"),
            ((b.ptr, (1 << 64) - 8, 16), 2, "range_wrap"),
            ((a.ptr + 16, a.ptr, 32), 2, "overlap"),
            ((a.ptr, a.ptr + 31, 32), 2, "overlap"),
            ((b.ptr, a.ptr + 4000, 97), 6, "out_of_bounds"),
            ((b.ptr + 4000, a.ptr, 97), 6, "out_of_bounds"),
            ((b.ptr, 0x1000, 16), 5, "unknown_pointer"),
        ]
        before = stats.op_stats(0)["memcpy_d2d"]
        for args, code, reason in cases:
            assert d2d(*args) == code, (args, reason)
            assert last_reason() == reason
        after = stats.op_stats(0)["memcpy_d2d"]
        assert after.calls - before.calls == len(cases)
        assert after.refused["overlap"] - before.refused.get("overlap", 0) == 2
        assert b.to_bytes() == snapshot  # nothing written by a refused copy
        # a copy to the same allocation is fine when the ranges are apart
        assert d2d(a.ptr + 2048, a.ptr, 2048) == 0
        assert a.to_bytes(2048) == a.to_bytes(0, 2048)
    dead = vramobs.alloc(64)
    address = dead.ptr
    dead.close()
    with vramobs.alloc(64) as live:
        if live.ptr != address:  # the freed address was not handed out again
            assert d2d(live.ptr, address, 64) == 5
            assert last_reason() == "freed_pointer"
        with pytest.raises(vramobs.OutOfBoundsError):
            live.copy_from(live, 1)  # 64 bytes at offset 1 run past the end
        with pytest.raises(ValueError):
            live.copy_from(dead)
        with pytest.raises(vramobs.InvalidArgumentError):
            live.copy_from(b"host bytes", src_offset=1)


def test_migrate_to_its_own_device_returns_the_same_buffer(rng):
    data = rng.integers(1, 256, 999, dtype="u1").tobytes()
    with vramobs.to_device(data) as buf:
        assert buf.migrate(0) is buf
        assert not buf.closed and buf.to_bytes() == data
        with pytest.raises(vramobs.InvalidArgumentError):
            buf.migrate(1)  # one emulated device
        assert buf.to_bytes() == data
    with pytest.raises(ValueError):
        buf.migrate(0)


def test_migrate_refusals_in_c():
    new_ptr, new_generation = ctypes.c_void_p(7), ctypes.c_uint64(7)
    migrate = _native.lib().vram_migrate
    with vramobs.alloc(128) as buf:
        assert migrate(buf.ptr, 0, 0, new_ptr, new_generation) == 2
        assert last_reason() == "invalid_generation"
        assert (new_ptr.value, new_generation.value) == (None, 0)
        assert migrate(None, buf.generation, 0, new_ptr, new_generation) == 2
        assert migrate(buf.ptr, buf.generation, 0, None, new_generation) == 2
        assert last_reason() == "null_pointer"
        assert migrate(buf.ptr, buf.generation, -1, new_ptr, None) == 2
        assert last_reason() == "invalid_device"
        assert migrate(buf.ptr, buf.generation + 1, 0, new_ptr, None) == 5
        assert migrate(buf.ptr + 8, buf.generation, 0, new_ptr, None) == 5
        assert migrate(buf.ptr, buf.generation, 0, new_ptr, None) == 0
        assert new_ptr.value == buf.ptr


MULTI_DEVICE = """
import ctypes, os, random
import vramobs
from vramobs import stats

rnd = random.Random(int.from_bytes(os.urandom(8), "little"))
def fresh(n):
    while True:
        data = rnd.randbytes(n)
        if any(data):
            return data

path = "{path}"
assert vramobs.copy_path(0, 2) == path and vramobs.copy_path(2, 0) == path
assert vramobs.copy_path(1, 1) == "d2d"
op = "memcpy_" + path

# Between devices, odd sizes and offsets, byte for byte.
data = fresh(3 * (1 << 20) + 5)
src = vramobs.to_device(data, device=0, tag="weights")
dst = vramobs.alloc(len(data) + 11, device=2)
before = stats.op_stats(2)[op]
dst.copy_from(src, 11)
assert dst.to_bytes(11) == data
after = stats.op_stats(2)[op]
assert (after.calls - before.calls, after.bytes_ok - before.bytes_ok) == (1, len(data))
assert stats.op_stats(0)[op].calls == 0  # counted on the destination's device

# Migration: the bytes, tag and wipe policy move; the source is freed; counts are exact.
src_generation = src.generation
moved = src.migrate(1)
assert src.closed and not moved.closed
assert moved.device == 1 and moved.tag == "weights" and moved.nbytes == len(data)
assert moved.generation != src_generation
assert moved.to_bytes() == data
r0, r1 = stats.registry_stats(0), stats.registry_stats(1)
assert (r0.live_count, r1.live_count, r1.by_tag) == (0, 1, {{"weights": (1, len(data))}})
assert stats.op_stats(1)["migrate"].bytes_ok == len(data)
assert stats.op_stats(1)[op].calls == 1  # the migration's own copy
assert [a.generation for a in stats.live_allocations(1)] == [moved.generation]

# A migration that cannot fit leaves everything as it was.
big = vramobs.alloc(6 << 20, device=0)
big.copy_from(fresh(6 << 20))
kept = big.to_bytes()
filler = vramobs.alloc((8 << 20) - (4 << 20), device=2)
try:
    big.migrate(2)
except vramobs.OutOfMemoryError:
    pass
else:
    raise AssertionError("6 MiB fitted in 4 MiB")
assert not big.closed and big.to_bytes() == kept
assert stats.registry_stats(2).live_count == 2  # dst and filler, nothing new
assert stats.op_stats(2)["migrate"].by_status == {{"VRAM_ERR_ALLOCATION_FAILED": 1}}  # target

# Wipe policy carried over.
secret = vramobs.to_device(fresh(512), device=0, wipe=True)
secret = secret.migrate(1)
wipes = stats.op_stats(0)["wipe"].calls
assert wipes == 1, wipes  # the source was wiped before it was freed

for buf in (moved, big, filler, dst, secret):
    buf.close()
assert stats.registry_stats().live_count == 0
assert vramobs.get_info(1).free == vramobs.get_info(1).total
print("ok")
"""


@pytest.mark.parametrize("peer, path", [("1", "p2p"), ("0", "staged")])
def test_copies_and_migration_between_host_devices(run_python, peer, path):
    result = run_python(
        MULTI_DEVICE.format(path=path),
        env={
            "VRAMOBS_BACKEND": "host",
            "VRAMOBS_HOST_DEVICES": "3",
            "VRAMOBS_HOST_CAPACITY": str(8 << 20),
            "VRAMOBS_HOST_PEER": peer,
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_host_peer_setting_is_validated(run_python):
    result = run_python(
        "import vramobs; print(vramobs.native_available(), vramobs.backend_diagnostic())",
        env={"VRAMOBS_BACKEND": "host", "VRAMOBS_HOST_PEER": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert "VRAMOBS_HOST_PEER='2'" in result.stdout


# ---------------------------------------------------------------------------------------------
# The CUDA backend over the fake driver.
# ---------------------------------------------------------------------------------------------

# Indented as the code that follows it, which the child dedents as one.
FAKE_PRELUDE = r"""
        fake().fakecuda_peer_enabled.argtypes = [ctypes.c_int, ctypes.c_int]
        fake().fakecuda_peer_enabled.restype = ctypes.c_int
        rnd = random.Random(SEED)
"""


def test_cuda_peer_copies_enable_access_once(child):
    child(
        FAKE_PRELUDE
        + r"""
        check("path", vramobs.copy_path(0, 1), "p2p")
        check("enabled 1 -> 0", fake().fakecuda_peer_enabled(1, 0), 1)
        check("not 0 -> 1 yet", fake().fakecuda_peer_enabled(0, 1), 0)
        data = randbytes(rnd, 70_001)
        a = vramobs.to_device(data, device=0)
        b = vramobs.alloc(len(data), device=1)
        peer0 = calls("cuMemcpyPeer")
        enable0 = calls("cuCtxEnablePeerAccess")
        b.copy_from(a)
        check("bytes", b.to_bytes(), data)
        check("one cuMemcpyPeer", calls("cuMemcpyPeer") - peer0, 1)
        check("access enabled once", calls("cuCtxEnablePeerAccess") - enable0, 0)
        c = vramobs.alloc(len(data), device=1)
        dtod0 = calls("cuMemcpyDtoD")
        c.copy_from(b)
        check("same device: cuMemcpyDtoD", calls("cuMemcpyDtoD") - dtod0, 1)
        check("copy within device 1", c.to_bytes(), data)
        check("counted", (stats.op_stats(1)["memcpy_p2p"].calls, stats.op_stats(1)["memcpy_d2d"].calls), (1, 1))
        live0 = live()
        moved = c.migrate(0)
        check("migrated bytes", moved.to_bytes(), data)
        check("fake live unchanged by a migration", live(), live0)
        for buf in (a, b, moved):
            buf.close()
        finish()
        """,
        FAKECUDA_DEVICES=2,
    )


def test_cuda_without_peer_access_stages_through_the_host(child):
    child(
        FAKE_PRELUDE
        + r"""
        check("path", vramobs.copy_path(1, 0), "staged")
        data = randbytes(rnd, (3 << 20) + 17)
        a = vramobs.to_device(data, device=1)
        b = vramobs.alloc(len(data), device=0)
        peer0 = calls("cuMemcpyPeer")
        b.copy_from(a)
        check("bytes", b.to_bytes(), data)
        check("no peer copy", calls("cuMemcpyPeer") - peer0, 0)
        check("counted as staged", stats.op_stats(0)["memcpy_staged"].bytes_ok, len(data))
        a.close(); b.close()
        finish()
        """,
        FAKECUDA_DEVICES=2,
        FAKECUDA_PEER=0,
    )


@pytest.mark.parametrize(
    "function, error, sticky, expected",
    [
        ("cuMemAlloc", 2, 0, "OutOfMemoryError"),
        ("cuMemcpyPeer", 1, 0, "CopyError"),
        ("cuStreamSynchronize", 700, 1, "DeviceFailedError"),
    ],
)
def test_failed_migration_changes_nothing(child, function, error, sticky, expected):
    child(
        FAKE_PRELUDE
        + f"""
        function, error, sticky, expected = {function!r}, {error}, {sticky}, {expected!r}
        """
        + r"""
        vramobs.copy_path(0, 1)  # peer access enabled before counting
        data = randbytes(rnd, 123_457)
        buf = vramobs.to_device(data, device=0, tag="kv_cache")
        live0, registry0 = live(), stats.registry_stats().live_count
        inject(function, error, 1, bool(sticky))
        try:
            buf.migrate(1)
        except vramobs.VramError as exc:
            check("exception", type(exc).__name__, expected)
        else:
            check("migration failed", "succeeded", "failed")
        fake().fakecuda_reset()
        check("source open", buf.closed, False)
        # After a sticky fault the new allocation is lost with its device's context.
        check("no new allocation in the driver", live(), live0 + sticky)
        check("registry unchanged", stats.registry_stats().live_count, registry0)
        check("source bytes intact", buf.to_bytes(), data)
        check("migrate counted as failed", sum(stats.op_stats(1)["migrate"].by_status.values()), 1)
        latched = [vramobs.device_state(d).name for d in (0, 1)]
        check("latch", latched, ["USABLE", "FAILED"] if sticky else ["USABLE", "USABLE"])
        buf.close()
        finish()
        """,
        FAKECUDA_DEVICES=2,
    )
