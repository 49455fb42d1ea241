import ctypes
import os
import threading

import pytest

import vramobs
from vramobs import errors, raw

CLASSES = {
    1: (vramobs.OutOfMemoryError, "VRAM_ERR_ALLOCATION_FAILED", MemoryError),
    2: (vramobs.InvalidArgumentError, "VRAM_ERR_INVALID_PARAMETERS", ValueError),
    3: (vramobs.CopyError, "VRAM_ERR_COPY_FAILED", None),
    4: (vramobs.NoDeviceError, "VRAM_ERR_NO_DEVICE", RuntimeError),
    5: (vramobs.UnknownPointerError, "VRAM_ERR_UNKNOWN_POINTER", ValueError),
    6: (vramobs.OutOfBoundsError, "VRAM_ERR_OUT_OF_BOUNDS", IndexError),
    7: (vramobs.InteriorPointerError, "VRAM_ERR_INTERIOR_POINTER", ValueError),
    8: (vramobs.DeviceFailedError, "VRAM_ERR_DEVICE_FAILED", RuntimeError),
    9: (vramobs.DriverError, "VRAM_ERR_DRIVER", RuntimeError),
    10: (vramobs.BusyError, "VRAM_ERR_BUSY", RuntimeError),
}


def raised(status, detail=""):
    with pytest.raises(vramobs.VramError) as info:
        errors.check(status, detail)
    return info.value


@pytest.mark.parametrize("status", sorted(CLASSES))
def test_each_status_raises_its_own_class(status):
    cls, name, builtin = CLASSES[status]
    exc = raised(status, "while testing")
    assert type(exc) is cls and exc.code == status and cls.code == status
    assert str(exc).startswith(f"{name}: ")
    assert str(exc).endswith("; while testing")
    if builtin is not None:
        assert isinstance(exc, builtin)


def test_status_classes_are_distinct_and_exported():
    classes = [cls for cls, _, _ in CLASSES.values()]
    assert len(set(classes)) == len(classes)
    assert all(issubclass(cls, vramobs.VramError) for cls in classes)
    assert set(errors.__all__) == {c.__name__ for c in classes} | {
        "VramError", "check", "raise_for"
    }


def test_builtin_bases_let_python_idioms_work():
    assert issubclass(vramobs.OutOfMemoryError, MemoryError)
    assert issubclass(vramobs.InvalidArgumentError, ValueError)
    assert issubclass(vramobs.OutOfBoundsError, IndexError)
    assert not issubclass(vramobs.OutOfBoundsError, ValueError)


def test_success_raises_nothing():
    assert errors.check(0) is None


@pytest.mark.parametrize("status", [11, 42, -3])
def test_unknown_status_raises_plain_vram_error_with_its_code(status):
    exc = raised(status)
    assert type(exc) is vramobs.VramError
    assert exc.code == status
    assert "VRAM_UNKNOWN_STATUS" in str(exc)
    assert vramobs.VramError.code == -1


def test_real_refusal_populates_reason_and_op():
    with pytest.raises(vramobs.InvalidArgumentError) as info:
        vramobs.alloc(0)
    exc = info.value
    assert (exc.reason, exc.op, exc.driver_error, exc.driver_error_name) == (
        "zero_size", "malloc", 0, None
    )
    assert "VRAM_ERR_INVALID_PARAMETERS" in str(exc) and "reason: zero size" in str(exc)


def test_driver_failure_populates_driver_error():
    with pytest.raises(vramobs.OutOfMemoryError) as info:
        vramobs.alloc(vramobs.get_info().total + 1)
    exc = info.value
    assert exc.reason == "none" and exc.op == "malloc"
    assert exc.driver_error == 2 and exc.driver_error_name == "HOST_ERROR_OUT_OF_MEMORY"
    assert "driver: HOST_ERROR_OUT_OF_MEMORY (2)" in str(exc)


@pytest.mark.parametrize(
    "refuse, cls, reason, op",
    [
        (lambda p, h: raw.free(p + 8), vramobs.InteriorPointerError, "interior_pointer", "free"),
        (lambda p, h: raw.memcpy_h2d(p, h, 65), vramobs.OutOfBoundsError, "out_of_bounds",
         "memcpy_h2d"),
        (lambda p, h: raw.memcpy_d2h(h, p + 64, 1), vramobs.UnknownPointerError,
         "unknown_pointer", "memcpy_d2h"),
        (lambda p, h: raw.memcpy_d2h(h, p, 2**64 - p), vramobs.InvalidArgumentError,
         "range_wrap", "memcpy_d2h"),
    ],
    ids=["interior", "out_of_bounds", "unknown", "range_wrap"],
)
def test_raise_for_reads_this_threads_last_error(refuse, cls, reason, op):
    host = ctypes.create_string_buffer(os.urandom(128))
    with vramobs.alloc(64) as buf:
        status = refuse(buf.ptr, ctypes.addressof(host))
        assert status == cls.code
        with pytest.raises(cls) as info:
            errors.raise_for(status)
    assert (info.value.reason, info.value.op) == (reason, op)
    assert f"reason: {reason.replace('_', ' ')}" in str(info.value)


def test_last_error_of_another_status_is_not_attributed():
    assert raw.malloc(0) == (2, 0)
    exc = raised(6)
    assert exc.reason == "none" and exc.op is None


@pytest.mark.parametrize(
    "call",
    [lambda: vramobs.set_device(1), lambda: vramobs.use_backend("bogus")],
    ids=["set_device", "use_backend"],
)
def test_refusal_does_not_report_an_earlier_calls_reason(call):
    host = ctypes.create_string_buffer(8)
    assert raw.memcpy_h2d(0, ctypes.addressof(host), 1) == 2
    with pytest.raises(vramobs.InvalidArgumentError) as info:
        call()
    assert info.value.op != "memcpy_h2d"
    assert info.value.reason != "null_pointer"
    assert "null pointer" not in str(info.value)


def test_last_error_is_per_thread():
    with pytest.raises(vramobs.InvalidArgumentError):
        vramobs.alloc(0)
    results = []

    def other():
        assert raw.free(0xBAD000) == 5
        with pytest.raises(vramobs.UnknownPointerError) as info:
            errors.raise_for(5)
        results.append((info.value.reason, info.value.op))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert results == [("unknown_pointer", "free")]
    with pytest.raises(vramobs.InvalidArgumentError) as info:
        errors.raise_for(2)
    assert (info.value.reason, info.value.op) == ("zero_size", "malloc")
