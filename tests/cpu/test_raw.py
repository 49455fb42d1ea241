import os
from collections import Counter

import numpy as np
import pytest

from vramobs import InvalidArgumentError, raw, stats

ALIGNMENT = 256
WORD = 1 << 64
INVALID = "VRAM_ERR_INVALID_PARAMETERS"


def rounded(n):
    return -(-n // ALIGNMENT) * ALIGNMENT


def host(data):
    """A writable host copy of data and its address (valid while the array is referenced)."""
    array = np.frombuffer(bytearray(data), dtype=np.uint8)
    return array, array.ctypes.data


@pytest.fixture
def device():
    """raw.malloc with cleanup: returns (address, contents) of a fresh allocation filled with
    random bytes. Leftovers are freed at teardown (free is idempotent)."""
    made = []

    def make(nbytes):
        status, address = raw.malloc(nbytes)
        assert status == 0 and address != 0
        made.append(address)
        contents = os.urandom(nbytes)
        _, src = host(contents)
        assert raw.memcpy_h2d(address, src, nbytes) == 0
        return address, contents

    yield make
    for address in made:
        assert raw.free(address) == 0


def read(address, nbytes):
    out, dst = host(os.urandom(nbytes))
    assert raw.memcpy_d2h(dst, address, nbytes) == 0
    return out.tobytes()


def assert_refused(delta, status, reason):
    assert delta.calls == 1
    assert delta.by_status == Counter({status: 1})
    assert delta.refused == (Counter({reason: 1}) if reason else Counter())
    assert delta.latency_error == 1 and delta.latency_ok == 0
    assert delta.bytes_ok == 0


def test_malloc_zero_is_invalid(op_watch):
    watch = op_watch()
    assert raw.malloc(0) == (2, 0)
    assert_refused(watch("malloc"), INVALID, "zero_size")


@pytest.mark.parametrize("nbytes", [WORD - 1, WORD - 255, WORD - ALIGNMENT + 1])
def test_malloc_whose_rounding_overflows_is_invalid(op_watch, nbytes):
    watch = op_watch()
    assert raw.malloc(nbytes) == (2, 0)
    assert_refused(watch("malloc"), INVALID, "size_overflow")


def test_largest_size_that_rounds_reaches_the_backend_and_fails(op_watch):
    watch = op_watch()
    assert raw.malloc(WORD - ALIGNMENT) == (1, 0)
    assert_refused(watch("malloc"), "VRAM_ERR_ALLOCATION_FAILED", None)


def test_malloc_above_capacity_fails_then_next_allocation_succeeds(op_watch):
    status, free_bytes, total = raw.get_info()
    assert status == 0 and 0 < free_bytes <= total
    for nbytes in (total + 1, free_bytes + 1):
        watch = op_watch()
        assert raw.malloc(nbytes) == (1, 0)
        assert_refused(watch("malloc"), "VRAM_ERR_ALLOCATION_FAILED", None)
    assert raw.get_info() == (0, free_bytes, total)
    status, address = raw.malloc(4096)
    assert status == 0 and address % ALIGNMENT == 0
    assert raw.free(address) == 0


def test_free_null_is_a_successful_no_op(op_watch):
    before = stats.registry_stats()
    watch = op_watch()
    assert raw.free(0) == 0
    delta = watch("free")
    assert delta.calls == 1 and delta.by_status == Counter({"VRAM_SUCCESS": 1})
    after = stats.registry_stats()
    assert (after.frees_total, after.repeated_frees_total) == (
        before.frees_total,
        before.repeated_frees_total,
    )


def test_double_free_succeeds_and_frees_once(device, op_watch):
    address, _ = device(1000)
    before = stats.registry_stats()
    watch = op_watch()
    assert raw.free(address) == 0
    assert raw.free(address) == 0
    after = stats.registry_stats()
    assert after.frees_total - before.frees_total == 1
    assert after.repeated_frees_total - before.repeated_frees_total == 1
    assert after.live_count == before.live_count - 1
    delta = watch("free")
    assert delta.by_status == Counter({"VRAM_SUCCESS": 2})
    assert delta.bytes_ok == 1000


# Addresses no allocator hands out. (A host buffer's address would not do: on the host backend
# it may be that of an emulated allocation freed earlier, which free() accepts idempotently.)
NEVER_ALLOCATED = [0x10, 0xDEAD0000, 1 << 63, WORD - 256]


def test_free_of_unknown_pointer_is_refused(op_watch):
    for pointer in NEVER_ALLOCATED:
        watch = op_watch()
        assert raw.free(pointer) == 5
        assert_refused(watch("free"), "VRAM_ERR_UNKNOWN_POINTER", "unknown_pointer")


def test_free_just_past_the_end_is_unknown_pointer(device, op_watch):
    address, contents = device(1000)
    watch = op_watch()
    assert raw.free(address + 1000) == 5
    assert_refused(watch("free"), "VRAM_ERR_UNKNOWN_POINTER", "unknown_pointer")
    assert read(address, 1000) == contents


@pytest.mark.parametrize("offset", [1, 255, 999])
def test_free_of_interior_pointer_is_refused_and_allocation_survives(device, op_watch, offset):
    address, contents = device(1000)
    watch = op_watch()
    assert raw.free(address + offset) == 7
    assert_refused(watch("free"), "VRAM_ERR_INTERIOR_POINTER", "interior_pointer")
    assert read(address, 1000) == contents
    fresh = os.urandom(1000)
    _, src = host(fresh)
    assert raw.memcpy_h2d(address, src, 1000) == 0
    assert read(address, 1000) == fresh


def test_free_inside_a_live_allocation_over_old_freed_starts_is_refused(op_watch):
    # glibc serves blocks above 32 MiB with mmap, and the kernel maps a new block into the
    # hole that unmapped ones left: the big allocation covers the freed ones' start addresses.
    # The pages are never touched, so this costs no memory.
    size = 33 << 20
    starts = [raw.malloc(size)[1] for _ in range(4)]
    assert all(starts)
    for address in starts:
        assert raw.free(address) == 0
    status, big = raw.malloc(4 * size)
    assert status == 0
    try:
        covered = [a for a in starts if big < a < big + 4 * size]
        if not covered:
            pytest.skip("the allocator placed the new allocation elsewhere")
        watch = op_watch()
        assert [raw.free(a) for a in covered] == [7] * len(covered)
        assert watch("free").refused == Counter({"interior_pointer": len(covered)})
    finally:
        assert raw.free(big) == 0


COPIES = {
    "memcpy_h2d": lambda device_address, host_address, n: raw.memcpy_h2d(
        device_address, host_address, n
    ),
    "memcpy_d2h": lambda device_address, host_address, n: raw.memcpy_d2h(
        host_address, device_address, n
    ),
}


@pytest.fixture(params=sorted(COPIES))
def copy(request):
    """(op name, copy(device_address, host_address, nbytes)) for each direction."""
    return request.param, COPIES[request.param]


@pytest.mark.parametrize("null", ["device", "host", "both"])
def test_copy_with_null_pointer_is_invalid(device, copy, op_watch, null):
    op, fn = copy
    address, _ = device(64)
    array, host_address = host(os.urandom(64))
    watch = op_watch()
    assert fn(0 if null != "host" else address, 0 if null != "device" else host_address, 64) == 2
    assert_refused(watch(op), INVALID, "null_pointer")


def test_copy_of_zero_bytes_is_invalid(device, copy, op_watch):
    op, fn = copy
    address, _ = device(64)
    array, host_address = host(os.urandom(64))
    watch = op_watch()
    assert fn(address, host_address, 0) == 2
    assert_refused(watch(op), INVALID, "zero_size")


@pytest.mark.parametrize("side", ["device", "host"])
@pytest.mark.parametrize("below_top", [1, 16, 4096])
def test_copy_range_wrapping_the_address_space_is_invalid(device, copy, op_watch, side, below_top):
    op, fn = copy
    address, contents = device(64)
    array, host_address = host(os.urandom(64))
    near_top = WORD - below_top
    watch = op_watch()
    if side == "device":
        assert fn(near_top, host_address, below_top + 1) == 2
    else:
        assert fn(address, near_top, below_top + 1) == 2
    assert_refused(watch(op), INVALID, "range_wrap")
    assert read(address, 64) == contents


def test_copy_from_real_pointer_with_size_reaching_past_the_top_is_invalid(device, copy, op_watch):
    op, fn = copy
    address, contents = device(64)
    array, host_address = host(os.urandom(64))
    watch = op_watch()
    assert fn(address, host_address, WORD - address) == 2
    assert_refused(watch(op), INVALID, "range_wrap")
    watch = op_watch()
    assert fn(address, host_address, WORD - max(address, host_address) - 1) == 6
    assert_refused(watch(op), "VRAM_ERR_OUT_OF_BOUNDS", "out_of_bounds")
    assert read(address, 64) == contents


@pytest.mark.parametrize("offset, nbytes", [(0, 1001), (1, 1000), (999, 2), (500, 1 << 20)])
def test_h2d_past_the_end_writes_nothing(device, op_watch, offset, nbytes):
    address, contents = device(1000)
    array, src = host(os.urandom(nbytes))
    watch = op_watch()
    assert raw.memcpy_h2d(address + offset, src, nbytes) == 6
    assert_refused(watch("memcpy_h2d"), "VRAM_ERR_OUT_OF_BOUNDS", "out_of_bounds")
    assert read(address, 1000) == contents


@pytest.mark.parametrize("offset, nbytes", [(0, 1001), (1, 1000), (999, 2)])
def test_d2h_past_the_end_writes_nothing(device, op_watch, offset, nbytes):
    address, _ = device(1000)
    original = os.urandom(nbytes)
    array, dst = host(original)
    watch = op_watch()
    assert raw.memcpy_d2h(dst, address + offset, nbytes) == 6
    assert_refused(watch("memcpy_d2h"), "VRAM_ERR_OUT_OF_BOUNDS", "out_of_bounds")
    assert array.tobytes() == original


@pytest.mark.parametrize("unknown", NEVER_ALLOCATED)
def test_copy_with_unknown_device_pointer_is_refused(copy, op_watch, unknown):
    op, fn = copy
    original = os.urandom(255)
    array, host_address = host(original)
    watch = op_watch()
    assert fn(unknown, host_address, 255) == 5
    assert_refused(watch(op), "VRAM_ERR_UNKNOWN_POINTER", "unknown_pointer")
    assert array.tobytes() == original


def test_copy_with_freed_pointer_is_refused(copy, op_watch):
    op, fn = copy
    status, address = raw.malloc(512)
    assert status == 0
    assert raw.free(address) == 0
    original = os.urandom(512)
    array, host_address = host(original)
    watch = op_watch()
    assert fn(address, host_address, 256) == 5
    assert_refused(watch(op), "VRAM_ERR_UNKNOWN_POINTER", "freed_pointer")
    watch = op_watch()
    assert fn(address + 100, host_address, 256) == 5
    assert watch(op).by_status == Counter({"VRAM_ERR_UNKNOWN_POINTER": 1})
    assert array.tobytes() == original


def test_get_info_tracks_allocations(rng):
    status, free_before, total = raw.get_info()
    assert status == 0 and 0 < free_before <= total
    nbytes = int(rng.integers(1, 1 << 20))
    status, address = raw.malloc(nbytes)
    assert status == 0
    status, free_during, total_during = raw.get_info()
    assert status == 0 and total_during == total
    assert free_before - free_during >= rounded(nbytes)
    assert raw.free(address) == 0
    assert raw.get_info() == (0, free_before, total)


@pytest.mark.parametrize("value", [-1, WORD, WORD + 1, -(1 << 70), True, 1.0, None, "1"])
@pytest.mark.parametrize(
    "op, call",
    [
        ("malloc", lambda v: raw.malloc(v)),
        ("free", lambda v: raw.free(v)),
        ("memcpy_h2d", lambda v: raw.memcpy_h2d(v, 4096, 1)),
        ("memcpy_h2d", lambda v: raw.memcpy_h2d(4096, v, 1)),
        ("memcpy_h2d", lambda v: raw.memcpy_h2d(4096, 4096, v)),
        ("memcpy_d2h", lambda v: raw.memcpy_d2h(v, 4096, 1)),
        ("memcpy_d2h", lambda v: raw.memcpy_d2h(4096, v, 1)),
        ("memcpy_d2h", lambda v: raw.memcpy_d2h(4096, 4096, v)),
    ],
)
def test_arguments_no_c_type_holds_raise_before_c(op_watch, op, call, value):
    watch = op_watch()
    with pytest.raises(InvalidArgumentError) as info:
        call(value)
    assert info.value.code == 2 and info.value.reason == "out_of_range"
    assert watch(op).calls == 0
