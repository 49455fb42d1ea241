import array
import gc
import os
import warnings

import numpy as np
import pytest

import vramobs
from vramobs import (
    DeviceBuffer,
    InvalidArgumentError,
    OutOfBoundsError,
    raw,
    stats,
)

SIZES = [1, 3, 255, 4097, 1_000_003]


def filled(nbytes):
    """A buffer of nbytes holding fresh random bytes, and those bytes."""
    data = os.urandom(nbytes)
    return vramobs.to_device(data), data


def test_alloc_reports_size_device_tag_and_is_registered():
    before = stats.registry_stats()
    buf = vramobs.alloc(1000)
    try:
        assert (buf.nbytes, len(buf), buf.device, buf.tag) == (1000, 1000, 0, "untagged")
        assert buf.ptr % 256 == 0 and buf.generation > 0 and not buf.closed
        during = stats.registry_stats()
        assert during.live_count == before.live_count + 1
        assert during.live_bytes == before.live_bytes + 1000
        assert during.live_rounded_bytes == before.live_rounded_bytes + 1024
    finally:
        buf.close()
    after = stats.registry_stats()
    assert after.live_count == before.live_count
    assert after.frees_total == before.frees_total + 1


def test_generations_are_unique_and_increasing():
    buffers = [vramobs.alloc(64) for _ in range(5)]
    generations = [b.generation for b in buffers]
    for b in buffers:
        b.close()
    assert generations == sorted(set(generations))


def test_close_is_idempotent_and_counted_once():
    buf = vramobs.alloc(512)
    before = stats.registry_stats()
    buf.close()
    buf.close()
    after = stats.registry_stats()
    assert buf.closed
    assert after.frees_total - before.frees_total == 1
    assert after.repeated_frees_total == before.repeated_frees_total


def test_context_manager_closes_even_on_error():
    with pytest.raises(KeyError):
        with vramobs.alloc(128) as buf:
            assert not buf.closed
            raise KeyError("boom")
    assert buf.closed


@pytest.mark.parametrize(
    "use",
    [
        lambda b: b.ptr,
        lambda b: b.copy_from(os.urandom(8)),
        lambda b: b.copy_to(bytearray(8)),
        lambda b: b.to_bytes(),
        lambda b: b.__cuda_array_interface__,
    ],
)
def test_closed_buffer_refuses_use(op_watch, use):
    buf = vramobs.alloc(64)
    buf.close()
    watch = op_watch()
    with pytest.raises(ValueError, match="closed") as info:
        use(buf)
    assert not isinstance(info.value, vramobs.VramError)
    assert watch("memcpy_h2d").calls == 0 and watch("memcpy_d2h").calls == 0
    assert "closed" in repr(buf) and buf.nbytes == 64


def test_direct_construction_is_refused():
    with pytest.raises(TypeError):
        DeviceBuffer()
    with pytest.raises(TypeError):
        DeviceBuffer(0x1000, 64)


@pytest.mark.parametrize("nbytes", [0, -1, 1 << 64, True, 1.5, "8", None])
def test_alloc_refuses_bad_sizes(op_watch, nbytes):
    watch = op_watch()
    with pytest.raises(InvalidArgumentError):
        vramobs.alloc(nbytes)
    assert watch("malloc").calls == (1 if nbytes == 0 else 0)


def test_alloc_beyond_capacity_raises_out_of_memory():
    total = vramobs.get_info().total
    with pytest.raises(vramobs.OutOfMemoryError) as info:
        vramobs.alloc(total + 1)
    assert isinstance(info.value, MemoryError)


@pytest.mark.parametrize("nbytes", SIZES)
def test_round_trip_bytes(nbytes):
    buf, data = filled(nbytes)
    with buf:
        assert buf.to_bytes() == data
        out = bytearray(os.urandom(nbytes))
        buf.copy_to(out)
        assert out == data


@pytest.mark.parametrize("nbytes", SIZES)
def test_round_trip_at_odd_offsets(rng, nbytes):
    background = os.urandom(nbytes)
    with vramobs.to_device(background) as buf:
        expected = bytearray(background)
        odd = [o for o in (1, 3, 255, 4095) if o < nbytes]
        for offset in odd + [int(o) for o in rng.integers(0, nbytes, size=4)]:
            length = int(rng.integers(1, nbytes - offset + 1))
            chunk = os.urandom(length)
            buf.copy_from(chunk, offset=offset)
            expected[offset : offset + length] = chunk
            assert buf.to_bytes(offset, length) == chunk
            out = bytearray(os.urandom(length))
            buf.copy_to(out, offset=offset)
            assert out == chunk
        assert buf.to_bytes() == expected


@pytest.mark.parametrize(
    "make",
    [
        bytes,
        bytearray,
        memoryview,
        lambda d: memoryview(bytearray(b"\x01\x02\x03" + d + b"\x04"))[3:-1],
        lambda d: np.frombuffer(d, dtype=np.uint8).copy(),
        lambda d: np.frombuffer(d, dtype=np.uint8).reshape(8, -1).copy(),
        lambda d: np.frombuffer(d, dtype=np.float32).reshape(4, -1).copy(),
        lambda d: array.array("i", d),
    ],
    ids=["bytes", "bytearray", "memoryview", "sliced-memoryview", "numpy-1d", "numpy-2d",
         "numpy-float32-2d", "array.array"],
)
def test_copy_from_accepts_buffer_protocol_objects(make):
    data = os.urandom(4096)
    with vramobs.to_device(os.urandom(4096)) as buf:
        buf.copy_from(make(data))
        assert buf.to_bytes() == data
    with vramobs.to_device(make(data)) as buf:
        assert buf.nbytes == 4096 and buf.to_bytes() == data


@pytest.mark.parametrize(
    "make, read",
    [
        (lambda n: bytearray(os.urandom(n)), bytes),
        (lambda n: memoryview(bytearray(os.urandom(n + 10)))[5:-5], bytes),
        (lambda n: np.frombuffer(os.urandom(n), dtype=np.uint8).copy(), lambda a: a.tobytes()),
        (
            lambda n: np.frombuffer(os.urandom(n), dtype=np.uint16).reshape(16, -1).copy(),
            lambda a: a.tobytes(),
        ),
        (lambda n: array.array("B", os.urandom(n)), lambda a: a.tobytes()),
    ],
    ids=["bytearray", "sliced-memoryview", "numpy-1d", "numpy-2d", "array.array"],
)
def test_copy_to_fills_writable_buffers(make, read):
    buf, data = filled(4096)
    with buf:
        out = make(4096)
        buf.copy_to(out)
        assert read(out) == data


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.frombuffer(os.urandom(128), dtype=np.uint8)[::2],
        lambda: np.asfortranarray(np.frombuffer(os.urandom(64), dtype=np.uint8).reshape(8, 8)),
        lambda: memoryview(bytearray(os.urandom(128)))[::2],
        lambda: 12345,
        lambda: "text",
    ],
    ids=["strided-numpy", "fortran-numpy", "strided-memoryview", "int", "str"],
)
def test_non_contiguous_or_non_buffer_host_objects_are_refused(op_watch, make):
    buf, data = filled(64)
    with buf:
        watch = op_watch()
        with pytest.raises(InvalidArgumentError) as info:
            buf.copy_from(make())
        assert info.value.reason == "host_buffer"
        with pytest.raises(InvalidArgumentError):
            buf.copy_to(make())
        assert watch("memcpy_h2d").calls == 0 and watch("memcpy_d2h").calls == 0
        assert buf.to_bytes() == data


@pytest.mark.parametrize(
    "make",
    [
        lambda: os.urandom(64),
        lambda: memoryview(os.urandom(64)),
        lambda: np.frombuffer(os.urandom(64), dtype=np.uint8),
    ],
    ids=["bytes", "memoryview-of-bytes", "read-only-numpy"],
)
def test_read_only_destination_is_refused(op_watch, make):
    buf, _ = filled(64)
    with buf:
        dst = make()
        original = bytes(dst)
        watch = op_watch()
        with pytest.raises(InvalidArgumentError):
            buf.copy_to(dst)
        assert watch("memcpy_d2h").calls == 0
        assert bytes(dst) == original


@pytest.mark.parametrize(
    "offset, length",
    [(0, 1001), (1, 1000), (999, 2), (1000, 1), (1001, 1), (1 << 64, 1), (1 << 70, 8)],
)
def test_out_of_bounds_is_refused_in_python(op_watch, offset, length):
    buf, data = filled(1000)
    with buf:
        watch = op_watch()
        with pytest.raises(OutOfBoundsError) as info:
            buf.copy_from(os.urandom(length), offset=offset)
        assert isinstance(info.value, IndexError) and info.value.reason == "out_of_bounds"
        with pytest.raises(OutOfBoundsError):
            buf.copy_to(bytearray(length), offset=offset)
        with pytest.raises(OutOfBoundsError):
            buf.to_bytes(offset, length)
        assert watch("memcpy_h2d").calls == 0 and watch("memcpy_d2h").calls == 0
        assert buf.to_bytes() == data


@pytest.mark.parametrize("offset", [-1, -(1 << 70), 1.0, True, None])
def test_bad_offsets_are_refused_in_python(op_watch, offset):
    buf, data = filled(100)
    with buf:
        watch = op_watch()
        with pytest.raises(InvalidArgumentError):
            buf.copy_from(os.urandom(10), offset=offset)
        with pytest.raises(InvalidArgumentError):
            buf.copy_to(bytearray(10), offset=offset)
        with pytest.raises(InvalidArgumentError):
            buf.to_bytes(offset)
        assert watch("memcpy_h2d").calls == 0 and watch("memcpy_d2h").calls == 0
        assert buf.to_bytes() == data


def test_empty_copy_is_refused_by_the_c_contract():
    buf, data = filled(100)
    with buf:
        with pytest.raises(InvalidArgumentError) as info:
            buf.copy_from(b"")
        assert info.value.reason == "zero_size" and info.value.op == "memcpy_h2d"
        assert buf.to_bytes() == data


def test_to_device_copies_and_tags():
    data = os.urandom(3000)
    before = stats.registry_stats().by_tag.get("weights", (0, 0))
    with vramobs.to_device(data, tag="weights") as buf:
        assert buf.tag == "weights" and buf.nbytes == 3000
        assert buf.to_bytes() == data
        assert stats.registry_stats().by_tag["weights"] == (before[0] + 1, before[1] + 3000)
        with vramobs.alloc(5, tag="weights"):
            assert stats.registry_stats().by_tag["weights"] == (before[0] + 2, before[1] + 3005)
    assert stats.registry_stats().by_tag.get("weights", (0, 0)) == before


@pytest.mark.parametrize("tag", ["Weights", "kv-cache", b"weights", 7])
def test_alloc_with_invalid_tag_is_refused_before_c(op_watch, tag):
    watch = op_watch()
    with pytest.raises(InvalidArgumentError) as info:
        vramobs.alloc(64, tag=tag)
    assert info.value.reason == "invalid_tag"
    assert watch("malloc").calls == 0


def test_garbage_collected_buffer_is_freed_with_resource_warning():
    before = stats.registry_stats()
    buf = vramobs.alloc(2048)
    with pytest.warns(
        ResourceWarning,
        match=r"2048 bytes on device 0 was garbage-collected without close\(\); "
        r"allocated at .*test_buffer\.py:\d+ in test_garbage_collected",
    ):
        del buf
        gc.collect()
    after = stats.registry_stats()
    assert after.live_count == before.live_count
    assert after.frees_total == before.frees_total + 1


def test_buffer_alive_at_exit_goes_with_the_process_silently(run_python):
    result = run_python(
        """
        import vramobs
        kept = vramobs.alloc(4096)
        print("allocated")
        """,
        env={"VRAMOBS_BACKEND": "host", "PYTHONWARNINGS": "error", "PYTHONDEVMODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "allocated\n" and result.stderr == ""


def test_closed_buffer_emits_no_warning_when_collected():
    buf = vramobs.alloc(2048)
    buf.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del buf
        gc.collect()


def test_close_does_not_free_a_newcomer_at_the_same_address():
    # Blocks above glibc's largest mmap threshold (32 MiB) are mapped on their own, and the
    # kernel maps the next one of the same size into the hole the last one left: the address
    # comes back. Only the first pages are ever touched.
    nbytes = 33 << 20
    buf = vramobs.alloc(nbytes)
    address = buf.ptr
    assert raw.free(address) == 0
    newcomers = []
    try:
        for _ in range(8):
            status, newcomer = raw.malloc(nbytes)
            assert status == 0
            newcomers.append(newcomer)
            if newcomer == address:
                break
        else:
            pytest.skip("the host allocator never handed the freed address out again")
        data = np.frombuffer(os.urandom(8192), dtype=np.uint8)
        assert raw.memcpy_h2d(address, data.ctypes.data, data.nbytes) == 0
        before = stats.registry_stats()
        buf.close()
        after = stats.registry_stats()
        assert buf.closed
        assert after.live_count == before.live_count
        assert after.frees_total == before.frees_total
        assert after.repeated_frees_total == before.repeated_frees_total + 1
        out = np.frombuffer(bytearray(os.urandom(data.nbytes)), dtype=np.uint8)
        assert raw.memcpy_d2h(out.ctypes.data, address, out.nbytes) == 0
        assert out.tobytes() == data.tobytes()
        assert [a.nbytes for a in stats.live_allocations() if a.address == address] == [nbytes]
    finally:
        for newcomer in newcomers:
            assert raw.free(newcomer) == 0


def test_close_after_free_behind_its_back_succeeds():
    buf = vramobs.alloc(777)
    assert raw.free(buf.ptr) == 0
    before = stats.registry_stats()
    buf.close()
    after = stats.registry_stats()
    assert buf.closed
    assert after.frees_total == before.frees_total
    assert after.repeated_frees_total == before.repeated_frees_total + 1


def test_cuda_array_interface():
    with vramobs.alloc(12345) as buf:
        interface = buf.__cuda_array_interface__
        assert interface["version"] == 3
        assert interface["shape"] == (12345,)
        assert interface["typestr"] == "|u1"
        assert interface["data"] == (buf.ptr, False)
        assert interface["strides"] is None and interface["stream"] is None


def test_repr_names_size_device_and_tag():
    with vramobs.alloc(99, tag="kv_cache") as buf:
        assert repr(buf) == "<DeviceBuffer 99 bytes, device=0, tag='kv_cache'>"
