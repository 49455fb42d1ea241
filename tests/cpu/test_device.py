import pytest

import vramobs
from vramobs import BusyError, DeviceState, InvalidArgumentError

MISSING_DRIVER = "/nonexistent/libcuda.so.1"


def test_get_info_is_consistent_with_allocations():
    info = vramobs.get_info()
    assert 0 < info.free <= info.total and info.used == info.total - info.free
    with vramobs.alloc(300):
        during = vramobs.get_info(0)
        assert during.total == info.total
        assert info.free - during.free >= 512
    assert vramobs.get_info() == info


def test_host_backend_has_one_device_by_default():
    assert vramobs.device_count() == 1
    assert vramobs.usable_devices() == [0]
    assert vramobs.device_state(0) is DeviceState.USABLE


def test_device_info_of_host_device():
    info = vramobs.device_info(0)
    assert info.index == 0
    assert info.uuid.startswith("HOST-") and info.uuid.endswith("000000000000")
    assert info.pci_bus_id == "host:00"
    assert info.name == "vramobs host emulation"
    assert info.total_bytes == vramobs.get_info().total
    assert info.compute_capability == (0, 0)
    assert info.driver_version == 0


def test_backend_is_host_and_diagnostic_empty():
    assert vramobs.backend() == "host"
    assert vramobs.backend_diagnostic() == ""


def test_current_device_defaults_to_zero_and_set_device_zero_works():
    assert vramobs.current_device() == 0
    vramobs.set_device(0)
    assert vramobs.current_device() == 0


NONEXISTENT = [1, 31]
OUT_OF_RANGE = [32, -1, 1 << 40, True, 1.0, "0"]


@pytest.mark.parametrize("device", NONEXISTENT + OUT_OF_RANGE)
def test_devices_the_backend_lacks_are_refused(op_watch, device):
    watch = op_watch()
    for call in (vramobs.set_device, vramobs.device_info, vramobs.get_info):
        with pytest.raises(InvalidArgumentError):
            call(device)
    with pytest.raises(InvalidArgumentError):
        vramobs.alloc(64, device=device)
    assert watch("malloc").calls == 0
    assert vramobs.current_device() == 0


@pytest.mark.parametrize("device", OUT_OF_RANGE)
def test_state_of_an_out_of_range_device_is_refused(device):
    with pytest.raises(InvalidArgumentError):
        vramobs.device_state(device)


@pytest.mark.parametrize("device", [0.0, False])
def test_device_equal_to_current_but_not_an_int_is_refused(device):
    with pytest.raises(InvalidArgumentError):
        vramobs.get_info(device)
    with pytest.raises(InvalidArgumentError):
        with vramobs.alloc(64, device=device):
            pass


@pytest.mark.parametrize("device", NONEXISTENT)
def test_state_of_a_device_that_does_not_exist_is_unavailable(device):
    assert vramobs.device_state(device) is DeviceState.UNAVAILABLE


@pytest.mark.parametrize("name", ["bogus", "", "HOST", "host "])
def test_unknown_backend_name_is_refused(name):
    with pytest.raises(InvalidArgumentError):
        vramobs.use_backend(name)
    assert vramobs.backend() == "host"


def test_backend_name_with_embedded_nul_is_refused():
    with pytest.raises(InvalidArgumentError):
        vramobs.use_backend("host\x00bogus")


@pytest.mark.parametrize("name", [None, b"host", 1])
def test_backend_name_must_be_str(name):
    with pytest.raises(InvalidArgumentError):
        vramobs.use_backend(name)
    assert vramobs.backend() == "host"


def test_changing_backend_while_a_buffer_is_live_is_refused():
    with vramobs.alloc(64):
        with pytest.raises(BusyError) as info:
            vramobs.use_backend("cuda")
        assert info.value.code == 10 and isinstance(info.value, RuntimeError)
        vramobs.use_backend("host")
        assert vramobs.backend() == "host"


NO_DRIVER = {"VRAMOBS_CUDA_DRIVER": MISSING_DRIVER}


def test_cuda_backend_without_driver_answers_no_device(run_python):
    result = run_python(
        """
        import ctypes, vramobs
        from vramobs import raw, NoDeviceError, DeviceState
        assert vramobs.backend() == "cuda"
        for call in (lambda: vramobs.alloc(4096), vramobs.get_info, vramobs.device_count,
                     lambda: vramobs.device_info(0)):
            try:
                call()
            except NoDeviceError as exc:
                assert exc.code == 4 and isinstance(exc, RuntimeError)
                assert "cannot load the NVIDIA driver library /nonexistent/libcuda.so.1" in str(exc), exc
            else:
                raise AssertionError("no NoDeviceError")
        assert raw.malloc(4096) == (4, 0)
        assert raw.free(0) == 0
        assert raw.free(0x7f0000000000) == 4
        assert raw.get_info() == (4, 0, 0)
        host = ctypes.create_string_buffer(64)
        h = ctypes.addressof(host)
        assert raw.memcpy_h2d(0x7f0000000000, h, 64) == 4
        assert raw.memcpy_d2h(h, 0x7f0000000000, 64) == 4
        assert raw.memcpy_h2d(0, h, 64) == 2
        assert raw.memcpy_d2h(h, 0, 64) == 2
        assert raw.memcpy_d2h(0, 0x7f0000000000, 64) == 2
        assert raw.memcpy_h2d(0x7f0000000000, h, 0) == 2
        assert raw.malloc(0) == (2, 0)
        assert vramobs.device_state(0) is DeviceState.UNAVAILABLE
        assert vramobs.usable_devices() == []
        assert MISSING in vramobs.backend_diagnostic()
        print("ok")
        """.replace("MISSING", repr(MISSING_DRIVER)),
        env=NO_DRIVER,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_bad_backend_setting_never_falls_back_to_host(run_python):
    result = run_python(
        """
        import vramobs
        from vramobs import raw, NoDeviceError
        for call in (lambda: vramobs.alloc(4096), vramobs.get_info, vramobs.device_count,
                     lambda: vramobs.device_info(0)):
            try:
                call()
            except NoDeviceError as exc:
                assert "VRAMOBS_BACKEND='bogus' names no backend" in str(exc), exc
            else:
                raise AssertionError("no NoDeviceError")
        assert vramobs.backend() != "host"
        assert raw.malloc(64) == (4, 0)
        assert raw.get_info() == (4, 0, 0)
        assert vramobs.usable_devices() == []
        vramobs.use_backend("host")
        with vramobs.alloc(64):
            pass
        print("ok")
        """,
        env={"VRAMOBS_BACKEND": "bogus"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_backend_from_environment(run_python):
    result = run_python(
        "import vramobs; print(vramobs.backend(), vramobs.device_count())",
        env={"VRAMOBS_BACKEND": "host"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "host 1\n"


def test_several_host_devices(run_python):
    result = run_python(
        """
        import os, threading, vramobs
        from vramobs import stats
        assert vramobs.device_count() == 3
        assert vramobs.usable_devices() == [0, 1, 2]
        assert [vramobs.device_info(d).uuid[-1] for d in range(3)] == ["0", "1", "2"]
        data = os.urandom(5000)
        buf = vramobs.to_device(data, device=2)
        assert buf.device == 2 and vramobs.current_device() == 0
        assert stats.registry_stats(2).live_count == 1
        assert stats.registry_stats(2).live_bytes == 5000
        assert stats.registry_stats(0).live_count == 0
        assert stats.registry_stats().live_count == 1
        assert vramobs.get_info(2).free == vramobs.get_info(0).free - 5120
        assert stats.op_stats(2)["malloc"].calls == 1
        assert stats.op_stats(2)["memcpy_h2d"].calls == 1
        assert stats.op_stats(0)["memcpy_h2d"].calls == 0
        assert buf.to_bytes() == data
        assert stats.op_stats(2)["memcpy_d2h"].calls == 1
        try:
            vramobs.alloc(1 << 40, device=2)
        except vramobs.OutOfMemoryError:
            pass
        else:
            raise AssertionError("1 TiB fitted")
        assert vramobs.current_device() == 0
        assert stats.op_stats(2)["malloc"].by_status == {
            "VRAM_SUCCESS": 1, "VRAM_ERR_ALLOCATION_FAILED": 1
        }
        vramobs.set_device(1)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(vramobs.current_device()))
        thread.start(); thread.join()
        assert seen == [0] and vramobs.current_device() == 1
        with vramobs.alloc(100) as other:
            assert other.device == 1 and stats.registry_stats(1).live_count == 1
        buf.close()
        assert stats.op_stats(2)["free"].calls == 1
        assert stats.registry_stats(2).live_count == 0
        try:
            vramobs.set_device(3)
        except vramobs.InvalidArgumentError:
            pass
        else:
            raise AssertionError("device 3 accepted")
        assert vramobs.device_state(3) is vramobs.DeviceState.UNAVAILABLE
        print("ok")
        """,
        env={"VRAMOBS_BACKEND": "host", "VRAMOBS_HOST_DEVICES": "3"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_host_capacity_from_environment(run_python):
    result = run_python(
        """
        import vramobs
        info = vramobs.get_info()
        assert info == (1048576, 1048576), info
        try:
            vramobs.alloc(2 * 1048576)
        except vramobs.OutOfMemoryError as exc:
            assert isinstance(exc, MemoryError) and exc.code == 1
        else:
            raise AssertionError("2 MiB fitted in 1 MiB")
        with vramobs.alloc(1048576):
            assert vramobs.get_info().free == 0
            try:
                vramobs.alloc(1)
            except MemoryError:
                pass
            else:
                raise AssertionError("allocated past capacity")
        with vramobs.alloc(1048576 - 255):
            pass
        print("ok")
        """,
        env={"VRAMOBS_BACKEND": "host", "VRAMOBS_HOST_CAPACITY": "1048576"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


@pytest.mark.parametrize(
    "name, value",
    [
        ("VRAMOBS_HOST_CAPACITY", "lots"),
        ("VRAMOBS_HOST_CAPACITY", "0"),
        ("VRAMOBS_HOST_CAPACITY", "-5"),
        ("VRAMOBS_HOST_DEVICES", "0"),
        ("VRAMOBS_HOST_DEVICES", "33"),
        ("VRAMOBS_HOST_DEVICES", "2x"),
    ],
)
def test_malformed_host_settings_make_the_backend_unusable(run_python, name, value):
    result = run_python(
        """
        import vramobs
        try:
            vramobs.alloc(64)
        except vramobs.NoDeviceError as exc:
            print(exc)
        """,
        env={"VRAMOBS_BACKEND": "host", name: value},
    )
    assert result.returncode == 0, result.stderr
    assert f"{name}='{value}' is not a number" in result.stdout
