"""The real CUDA backend (native/src/backend_cuda.c) against the fake driver of tests/fakecuda.

libvram_ops chooses its backend once per process and keeps a failed device latched for the
life of the process, so every scenario runs in a child interpreter with
VRAMOBS_BACKEND=cuda and VRAMOBS_CUDA_DRIVER pointing at libfakecuda.so. In the child,
ctypes.CDLL on that same path returns the copy libvram_ops loaded, whose control functions
inject driver faults (fakecuda_inject) and count driver calls (fakecuda_calls), so a test
can assert both what vramobs answers and whether it reached the driver at all.

The fake's "device pointers" are host addresses (see fakecuda.c), so a child may also read
device memory directly with ctypes.string_at to check where a copy landed without a driver
call. Children run in a temporary directory so the source tree cannot shadow the installed
package, record every mismatch instead of stopping at the first, and print one
``RESULT {json}`` line that the parent asserts on.

Building the fake needs a C compiler and cuda.h: from $VRAMOBS_CUDA_INCLUDE_DIR, else the
nvidia-cuda-runtime wheel installed in this interpreter's environment, else a CUDA toolkit
($CUDA_HOME, $CUDA_PATH or /usr/local/cuda).
"""

import ctypes.util

import pytest

# ---------------------------------------------------------------------------------------------
# Device description, round trips, get_info.
# ---------------------------------------------------------------------------------------------


def test_device_info_round_trips_and_get_info(child):
    result = child(
        r"""
        rnd = random.Random(SEED)
        check("backend", vramobs.backend(), "cuda")
        check("diagnostic", vramobs.backend_diagnostic(), "")
        check("device_count", vramobs.device_count(), 1)
        check("usable_devices", vramobs.usable_devices(), [0])
        check("device_state", vramobs.device_state(0), DeviceState.USABLE)

        info = vramobs.device_info(0)
        check("index", info.index, 0)
        check("name", info.name, "Fake CUDA Device 0")
        check("uuid", info.uuid, "GPU-facecda0-0000-4000-8000-000000000000")
        check("uuid length", len(info.uuid), len("GPU-") + 36)
        check("pci_bus_id", info.pci_bus_id, "00000000:00:00.0")
        check("total_bytes", info.total_bytes, GiB)
        check("compute_capability", info.compute_capability, (9, 0))
        check("driver_version", info.driver_version, 13000)

        total, reserved = GiB, 64 * MiB
        check("get_info, nothing allocated", tuple(vramobs.get_info()), (fake_free(total, reserved, []), total))
        check("raw.get_info", raw.get_info(), (0, fake_free(total, reserved, []), total))

        live0, live_bytes0 = live(), live_bytes()
        reg0 = stats.registry_stats()
        h2d0 = stats.op_stats()["memcpy_h2d"]
        sizes = [1, 2, 3, 7, 255, 256, 257, 511, 512, 513, 1023, 4097, 65535, 65537,
                 MiB + 13, 3 * MiB + 1]
        buffers, models = [], []
        copied = 0
        for n in sizes:
            data = randbytes(rnd, n)
            if n % 2:
                buf = vramobs.to_device(data)
            else:
                buf = vramobs.alloc(n)
                buf.copy_from(data)
            copied += n
            buffers.append(buf)
            models.append(bytearray(data))
            check(f"{n}: to_bytes", buf.to_bytes() == data, True)
            # The fake's device memory is host memory: the bytes really are at buf.ptr.
            check(f"{n}: bytes at the device address", ctypes.string_at(buf.ptr, n) == data, True)
            check(f"{n}: fake alignment", buf.ptr % 512, 0)

        # Odd offsets and lengths, through the buffer and through raw.
        for buf, model in zip(buffers, models):
            n = buf.nbytes
            for _ in range(4):
                offset = rnd.randrange(n) | 1 if n > 1 else 0
                offset = min(offset, n - 1)
                length = rnd.randrange(1, n - offset + 1)
                patch = randbytes(rnd, length)
                if rnd.random() < 0.5:
                    buf.copy_from(patch, offset=offset)
                else:
                    src, src_addr = host(patch)
                    check(f"{n}: raw.memcpy_h2d at {offset}", raw.memcpy_h2d(buf.ptr + offset, src_addr, length), 0)
                copied += length
                model[offset:offset + length] = patch
                out = bytearray(randbytes(rnd, length))
                if rnd.random() < 0.5:
                    buf.copy_to(out, offset=offset)
                else:
                    dst, dst_addr = host(bytes(out))
                    check(f"{n}: raw.memcpy_d2h at {offset}", raw.memcpy_d2h(dst_addr, buf.ptr + offset, length), 0)
                    out = bytearray(dst.raw)
                check(f"{n}: read back {length} at {offset}", out == patch, True)
                check(f"{n}: to_bytes({offset}, {length})", buf.to_bytes(offset, length) == patch, True)
            check(f"{n}: whole buffer after patches", buf.to_bytes() == bytes(model), True)
            check(f"{n}: device memory after patches", ctypes.string_at(buf.ptr, n) == bytes(model), True)

        check("fake live allocations", live() - live0, len(sizes))
        check("fake live bytes", live_bytes() - live_bytes0, sum(sizes))
        reg = stats.registry_stats()
        check("registry live_count", reg.live_count - reg0.live_count, len(sizes))
        check("registry live_bytes", reg.live_bytes - reg0.live_bytes, sum(sizes))
        check("registry live_rounded_bytes", reg.live_rounded_bytes - reg0.live_rounded_bytes,
              sum(cuda_footprint(n) for n in sizes))
        check("registry by tag", reg.by_tag, {"untagged": (len(sizes), sum(sizes))})
        check("get_info with buffers", tuple(vramobs.get_info()), (fake_free(total, reserved, sizes), total))
        h2d = stats.op_stats()["memcpy_h2d"]
        check("memcpy_h2d bytes_ok", h2d.bytes_ok - h2d0.bytes_ok, copied)
        check("memcpy_h2d errors", delta(h2d.by_status, h2d0.by_status).keys() - {"VRAM_SUCCESS"}, set())

        for buf in buffers:
            buf.close()
        check("fake live after close", (live(), live_bytes()), (live0, live_bytes0))
        check("registry live after close", stats.registry_stats().live_count, 0)
        check("get_info after close", tuple(vramobs.get_info()), (fake_free(total, reserved, []), total))
        check("driver made", calls("cuMemAlloc") >= len(sizes), True)
        # Each call pushes the primary context and pops it again: the caller's is left as found.
        check("context left current", current_context(), (0, None))
        finish(backend=vramobs.backend(), name=info.name, uuid=info.uuid, pci_bus_id=info.pci_bus_id)
        """
    )
    assert result["backend"] == "cuda"
    assert result["name"] == "Fake CUDA Device 0"
    assert result["uuid"].startswith("GPU-") and len(result["uuid"]) == 40
    assert result["pci_bus_id"] == "00000000:00:00.0"


def test_two_devices(child):
    child(
        r"""
        rnd = random.Random(SEED)
        total, reserved = 256 * MiB, 16 * MiB
        check("device_count", vramobs.device_count(), 2)
        check("usable_devices", vramobs.usable_devices(), [0, 1])
        info1 = vramobs.device_info(1)
        check("name 1", info1.name, "Fake CUDA Device 1")
        check("uuid 1", info1.uuid, "GPU-facecda0-0000-4000-8000-000000000001")
        check("pci_bus_id 1", info1.pci_bus_id, "00000000:01:00.0")
        check("index 1", info1.index, 1)
        check("total_bytes 1", info1.total_bytes, total)
        check("driver_version from the driver", info1.driver_version, 12080)
        check("info 0 name", vramobs.device_info(0).name, "Fake CUDA Device 0")

        empty = fake_free(total, reserved, [])
        check("get_info(0)", tuple(vramobs.get_info(0)), (empty, total))
        check("get_info(1)", tuple(vramobs.get_info(1)), (empty, total))
        live0 = live()
        malloc0 = {d: by_status("malloc", d) for d in (0, 1)}

        n = 3001
        data = randbytes(rnd, n)
        buf = vramobs.alloc(n, device=1, tag="weights")
        check("buffer device", buf.device, 1)
        check("thread device unchanged", vramobs.current_device(), 0)
        buf.copy_from(data)
        check("round trip on device 1", buf.to_bytes() == data, True)
        check("bytes at the device address", ctypes.string_at(buf.ptr, n) == data, True)
        check("fake live", live() - live0, 1)
        check("device 1 memory taken", tuple(vramobs.get_info(1)), (fake_free(total, reserved, [n]), total))
        check("device 0 memory untouched", tuple(vramobs.get_info(0)), (empty, total))
        r1, r0 = stats.registry_stats(1), stats.registry_stats(0)
        check("registry_stats(1)", (r1.live_count, r1.live_bytes, r1.live_rounded_bytes, r1.allocs_total),
              (1, n, cuda_footprint(n), 1))
        check("registry_stats(1) by tag", r1.by_tag, {"weights": (1, n)})
        check("registry_stats(0)", (r0.live_count, r0.allocs_total), (0, 0))
        check("live_allocations(1)", [(a.device, a.nbytes, a.tag) for a in stats.live_allocations(1)],
              [(1, n, "weights")])
        check("malloc counted on device 1", delta(by_status("malloc", 1), malloc0[1]), {"VRAM_SUCCESS": 1})
        check("malloc not counted on device 0", delta(by_status("malloc", 0), malloc0[0]), {})
        check("copies counted on device 1",
              (stats.op_stats(1)["memcpy_h2d"].bytes_ok, stats.op_stats(1)["memcpy_d2h"].bytes_ok), (n, n))

        # The thread's device: raw calls follow set_device; another thread keeps device 0.
        vramobs.set_device(1)
        status, p = raw.malloc(777)
        check("raw.malloc on device 1", status, 0)
        check("raw.get_info on device 1", raw.get_info(), (0, fake_free(total, reserved, [n, 777]), total))
        seen = {}
        t = threading.Thread(target=lambda: seen.update(device=vramobs.current_device(), info=tuple(vramobs.get_info())))
        t.start(); t.join()
        check("other thread's device", seen, {"device": 0, "info": (empty, total)})
        check("registry_stats(1) with raw", stats.registry_stats(1).live_count, 2)
        check("raw.free on device 1", raw.free(p), 0)
        vramobs.set_device(0)

        buf.close()
        check("fake live after close", live(), live0)
        check("get_info(1) after close", tuple(vramobs.get_info(1)), (empty, total))
        r1 = stats.registry_stats(1)
        check("registry_stats(1) after close", (r1.live_count, r1.allocs_total, r1.frees_total), (0, 2, 2))
        finish()
        """,
        FAKECUDA_DEVICES=2,
        FAKECUDA_TOTAL_BYTES=256 << 20,
        FAKECUDA_DRIVER_VERSION=12080,
    )


# ---------------------------------------------------------------------------------------------
# Out of memory.
# ---------------------------------------------------------------------------------------------


def test_out_of_memory_is_not_sticky(child):
    child(
        r"""
        rnd = random.Random(SEED)
        total = 64 * MiB
        reserved = total // 16
        free0 = fake_free(total, reserved, [])
        check("device total", vramobs.device_info(0).total_bytes, total)
        check("get_info", tuple(vramobs.get_info()), (free0, total))
        live0 = live()
        malloc0 = by_status("malloc")

        exc = raises("alloc beyond the device", vramobs.OutOfMemoryError, vramobs.alloc, free0 + 1)
        if exc is not None:
            check("code", exc.code, 1)
            check("driver_error", exc.driver_error, 2)
            check("driver_error_name", exc.driver_error_name, "CUDA_ERROR_OUT_OF_MEMORY")
            check("op", exc.op, "malloc")
            check("is a MemoryError", isinstance(exc, MemoryError), True)
            check_true("message names the driver error", "CUDA_ERROR_OUT_OF_MEMORY" in str(exc), str(exc))
        check("raw.malloc beyond the device", raw.malloc(free0 + 1), (1, 0))
        check("raw.malloc of 1 TiB", raw.malloc(1 << 40), (1, 0))
        check("malloc failures counted", delta(by_status("malloc"), malloc0), {"VRAM_ERR_ALLOCATION_FAILED": 3})
        check("device state after OOM", vramobs.device_state(0), DeviceState.USABLE)
        check("usable after OOM", vramobs.usable_devices(), [0])
        check("registry after OOM", stats.registry_stats().live_count, 0)
        check("fake after OOM", live(), live0)

        # Exactly all free memory, then one byte more.
        big = vramobs.alloc(free0)
        check("get_info full", tuple(vramobs.get_info()), (0, total))
        raises("alloc on a full device", vramobs.OutOfMemoryError, vramobs.alloc, 1)
        tail = randbytes(rnd, 4099)
        big.copy_from(tail, offset=free0 - len(tail))
        check("tail of the big buffer", big.to_bytes(free0 - len(tail)) == tail, True)
        big.close()
        check("get_info after freeing", tuple(vramobs.get_info()), (free0, total))

        # The next allocation works.
        data = randbytes(rnd, 1001)
        with vramobs.to_device(data) as buf:
            check("round trip after OOM", buf.to_bytes() == data, True)

        # An injected out-of-memory on the next cuMemAlloc, and the one after it works.
        inject("cuMemAlloc", 2, 1)
        exc = raises("injected OOM", vramobs.OutOfMemoryError, vramobs.alloc, 1000)
        if exc is not None:
            check("injected driver_error_name", exc.driver_error_name, "CUDA_ERROR_OUT_OF_MEMORY")
        check("state after injected OOM", vramobs.device_state(0), DeviceState.USABLE)
        data = randbytes(rnd, 1000)
        with vramobs.to_device(data) as buf:
            check("round trip after injected OOM", buf.to_bytes() == data, True)

        # A driver that "succeeds" without a pointer is an allocation failure, not a crash.
        inject("cuMemAlloc", 0, 1)
        exc = raises("cuMemAlloc success with pointer 0", vramobs.OutOfMemoryError, vramobs.alloc, 64)
        if exc is not None:
            check("no driver error for pointer 0", (exc.driver_error, exc.driver_error_name), (0, None))
        check("registry after pointer 0", stats.registry_stats().live_count, 0)

        check("fake at the end", live(), live0)
        finish()
        """,
        FAKECUDA_TOTAL_BYTES=64 << 20,
    )


# ---------------------------------------------------------------------------------------------
# The fault matrix: every memory function of the driver x non-sticky and sticky faults.
# ---------------------------------------------------------------------------------------------

_OPS = {
    "cuMemAlloc": "malloc",
    "cuMemFree": "free",
    "cuMemcpyHtoD": "memcpy_h2d",
    "cuMemcpyDtoH": "memcpy_d2h",
    "cuMemGetInfo": "get_info",
}
_NON_STICKY_STATUS = {"malloc": 1, "free": 9, "memcpy_h2d": 3, "memcpy_d2h": 3, "get_info": 9}
_STATUS = {
    1: ("VRAM_ERR_ALLOCATION_FAILED", "OutOfMemoryError"),
    3: ("VRAM_ERR_COPY_FAILED", "CopyError"),
    8: ("VRAM_ERR_DEVICE_FAILED", "DeviceFailedError"),
    9: ("VRAM_ERR_DRIVER", "DriverError"),
}
_FAULTS = [
    pytest.param("CUDA_ERROR_OUT_OF_MEMORY", 2, False, id="oom"),
    pytest.param("CUDA_ERROR_INVALID_VALUE", 1, False, id="invalid_value"),
    pytest.param("CUDA_ERROR_ILLEGAL_ADDRESS", 700, True, id="illegal_address_sticky"),
    pytest.param("CUDA_ERROR_UNKNOWN", 999, True, id="unknown_sticky"),
]

_MATRIX_CHILD = r"""
FN, OP = os.environ["CASE_FN"], os.environ["CASE_OP"]
ERR, ERR_NAME = int(os.environ["CASE_ERR"]), os.environ["CASE_ERR_NAME"]
STICKY = os.environ["CASE_STICKY"] == "1"
EXPECT, EXPECT_NAME = int(os.environ["CASE_STATUS"]), os.environ["CASE_STATUS_NAME"]
EXPECT_EXC = getattr(vramobs, os.environ["CASE_EXC"])
rnd = random.Random(SEED)
total, reserved = GiB, 64 * MiB

info0 = vramobs.device_info(0)  # cached before the fault: it must still answer after one
start_live = live()

keep_data = randbytes(rnd, 3001)
keep = vramobs.to_device(keep_data)
P = 1531
p_data = randbytes(rnd, P)
status, p = raw.malloc(P)
check("raw.malloc before the fault", status, 0)
src, src_addr = host(p_data)
check("raw.memcpy_h2d before the fault", raw.memcpy_h2d(p, src_addr, P), 0)
p_live = True
sizes = [3001, P]

OFF, N = 7, 1001  # an odd range inside p
new = randbytes(rnd, N)
new_buf, new_addr = host(new)
sentinel = randbytes(rnd, N)
dst, dst_addr = host(sentinel)

reg0 = stats.registry_stats()
op0 = stats.op_stats()[OP]
fake0 = live()

# ---- the faulting call, through the C contract ------------------------------------------
inject(FN, ERR, 1, STICKY)
if FN == "cuMemAlloc":
    status, address = raw.malloc(2049)
    check("address after a failed malloc", address, 0)
elif FN == "cuMemFree":
    status = raw.free(p)
elif FN == "cuMemcpyHtoD":
    status = raw.memcpy_h2d(p + OFF, new_addr, N)
elif FN == "cuMemcpyDtoH":
    status = raw.memcpy_d2h(dst_addr, p + OFF, N)
else:
    status, f, t = raw.get_info()
    check("get_info outputs on failure", (f, t), (0, 0))
observed_status = status
check("driver call was made", calls(FN) > 0, True)

# This thread's last error describes the failed call.
exc = raises("last error of the failed call", EXPECT_EXC, errors.raise_for, status)
if exc is not None:
    check("exception code", exc.code, EXPECT)
    check("driver_error", exc.driver_error, ERR)
    check("driver_error_name", exc.driver_error_name, ERR_NAME)
    check("op", exc.op, OP)

op1 = stats.op_stats()[OP]
check("calls counted", op1.calls - op0.calls, 1)
check("by_status", delta(op1.by_status, op0.by_status), {EXPECT_NAME: 1})
check("latency_error counted", op1.latency_error.count - op0.latency_error.count, 1)
check("nothing refused", delta(op1.refused, op0.refused), {})

# The failed driver call did no work.
check("fake live allocations", live(), fake0)
check("device memory of p unchanged", ctypes.string_at(p, P) == p_data, True)
check("host destination unchanged", dst.raw == sentinel, True)

reg1 = stats.registry_stats()
if STICKY and FN == "cuMemFree":
    # The context is dead and its memory with it: the allocation is dropped as lost.
    check("registry live_count", reg1.live_count, reg0.live_count - 1)
    check("registry live_bytes", reg1.live_bytes, reg0.live_bytes - P)
    check("registry lost_total", reg1.lost_total, reg0.lost_total + 1)
    check("registry frees_total", reg1.frees_total, reg0.frees_total)
    p_live = False
    sizes.remove(P)
else:
    for field in ("live_count", "live_bytes", "allocs_total", "frees_total", "lost_total"):
        check(f"registry {field} unchanged", getattr(reg1, field), getattr(reg0, field))

if not STICKY:
    check("device state", vramobs.device_state(0), DeviceState.USABLE)
    check("usable devices", vramobs.usable_devices(), [0])

    # ---- the same fault through the Python API ------------------------------------------
    inject(FN, ERR, 1, False)
    if FN == "cuMemAlloc":
        exc = raises("vramobs.alloc", vramobs.OutOfMemoryError, vramobs.alloc, 4097)
    elif FN == "cuMemFree":
        doomed = vramobs.alloc(300)
        doomed_ptr = doomed.ptr
        exc = raises("DeviceBuffer.close", vramobs.DriverError, doomed.close)
        check("fake still holds the buffer", live(), fake0 + 1)
        # Fault used up: free it (through the buffer if it still allows that).
        if doomed.closed:
            check("raw.free of the buffer's allocation", raw.free(doomed_ptr), 0)
        else:
            doomed.close()
    elif FN == "cuMemcpyHtoD":
        exc = raises("copy_from", vramobs.CopyError, keep.copy_from, new, offset=OFF)
        check("keep unchanged by the failed copy", keep.to_bytes() == keep_data, True)
    elif FN == "cuMemcpyDtoH":
        out = bytearray(sentinel)
        exc = raises("copy_to", vramobs.CopyError, keep.copy_to, out, offset=OFF)
        check("host buffer unchanged by the failed copy", bytes(out) == sentinel, True)
    else:
        exc = raises("get_info", vramobs.DriverError, vramobs.get_info)
    if exc is not None:
        check("API exception driver_error_name", exc.driver_error_name, ERR_NAME)
        check("API exception op", exc.op, OP)
    check("API failure counted", delta(stats.op_stats()[OP].by_status, op0.by_status).get(EXPECT_NAME), 2)

    # ---- the fault is gone: everything works again --------------------------------------
    check("device state after", vramobs.device_state(0), DeviceState.USABLE)
    check("get_info", tuple(vramobs.get_info()), (fake_free(total, reserved, sizes), total))
    check("p intact", ctypes.string_at(p, P) == p_data, True)
    back, back_addr = host(randbytes(rnd, P))
    check("raw.memcpy_d2h of p", raw.memcpy_d2h(back_addr, p, P), 0)
    check("p reads back", back.raw == p_data, True)
    check("raw.memcpy_h2d into p", raw.memcpy_h2d(p + OFF, new_addr, N), 0)
    check("new bytes in p", ctypes.string_at(p + OFF, N) == new, True)
    keep.copy_from(new, offset=OFF)
    expected_keep = keep_data[:OFF] + new + keep_data[OFF + N:]
    check("keep after a good copy", keep.to_bytes() == expected_keep, True)
    with vramobs.to_device(new) as extra:
        check("a new allocation works", extra.to_bytes() == new, True)
    check("p still freeable", raw.free(p), 0)
    p_live = False
    keep.close()
    check("nothing leaked in the fake", live(), start_live)
    reg = stats.registry_stats()
    check("registry empty", (reg.live_count, reg.lost_total), (0, 0))
else:
    check("device state", vramobs.device_state(0), DeviceState.FAILED)
    check("usable devices", vramobs.usable_devices(), [])
    check("device_count still answers", vramobs.device_count(), 1)
    after0 = {op: by_status(op) for op in ("malloc", "free", "memcpy_h2d", "memcpy_d2h", "get_info")}
    lost0 = stats.registry_stats().lost_total
    out = bytearray(randbytes(rnd, 64))
    before = call_counts()

    check("raw.malloc", raw.malloc(64), (8, 0))
    raises("vramobs.alloc", vramobs.DeviceFailedError, vramobs.alloc, 64)
    check("raw.memcpy_h2d", raw.memcpy_h2d(keep.ptr, new_addr, 64), 8)
    raises("copy_from", vramobs.DeviceFailedError, keep.copy_from, new[:64])
    check("raw.memcpy_d2h", raw.memcpy_d2h(dst_addr, keep.ptr + 1, 64), 8)
    raises("copy_to", vramobs.DeviceFailedError, keep.copy_to, out)
    check("raw.get_info", raw.get_info(), (8, 0, 0))
    raises("get_info", vramobs.DeviceFailedError, vramobs.get_info)
    check("device_info from the cache", vramobs.device_info(0), info0)
    exc = raises("free of another live buffer", vramobs.DeviceFailedError, keep.close)
    if exc is not None:
        check("no driver error on a latched device", exc.driver_error, 0)
    if p_live:
        check("raw.free of p", raw.free(p), 8)
        p_live = False
    check("driver calls after the sticky fault", delta(call_counts(), before), {})

    after = {op: delta(by_status(op), after0[op]) for op in after0}
    check("statuses after the fault", after, {
        "malloc": {"VRAM_ERR_DEVICE_FAILED": 2},
        "free": {"VRAM_ERR_DEVICE_FAILED": 2 if FN != "cuMemFree" else 1},
        "memcpy_h2d": {"VRAM_ERR_DEVICE_FAILED": 2},
        "memcpy_d2h": {"VRAM_ERR_DEVICE_FAILED": 2},
        "get_info": {"VRAM_ERR_DEVICE_FAILED": 2},
    })
    reg = stats.registry_stats()
    check("registry live after the fault", reg.live_count, 0)
    check("lost allocations", reg.lost_total - lost0, 2 if FN != "cuMemFree" else 1)
    check("lost in all", reg.lost_total, 2)

    # The latch outlives the driver's own recovery: only a new process may use the device.
    fake().fakecuda_reset()
    before = call_counts()
    raises("alloc after the driver recovered", vramobs.DeviceFailedError, vramobs.alloc, 64)
    check("state after the driver recovered", vramobs.device_state(0), DeviceState.FAILED)
    check("no driver call after recovery", delta(call_counts(), before), {})

finish(status=observed_status)
"""


@pytest.mark.parametrize("error_name, error, sticky", _FAULTS)
@pytest.mark.parametrize("function", list(_OPS))
def test_fault_matrix(child, function, error_name, error, sticky):
    op = _OPS[function]
    expected = 8 if sticky else _NON_STICKY_STATUS[op]
    status_name, exception = _STATUS[expected]
    result = child(
        _MATRIX_CHILD,
        CASE_FN=function,
        CASE_OP=op,
        CASE_ERR=error,
        CASE_ERR_NAME=error_name,
        CASE_STICKY=int(sticky),
        CASE_STATUS=expected,
        CASE_STATUS_NAME=status_name,
        CASE_EXC=exception,
    )
    assert result["status"] == expected


def test_sticky_fault_before_first_device_query_and_per_device_latch(child):
    child(
        r"""
        rnd = random.Random(SEED)
        inject("cuMemAlloc", 700, 1, True)
        exc = raises("alloc", vramobs.DeviceFailedError, vramobs.alloc, 100)
        if exc is not None:
            check("driver_error_name", exc.driver_error_name, "CUDA_ERROR_ILLEGAL_ADDRESS")
        check("state 0", vramobs.device_state(0), DeviceState.FAILED)
        check("state 1", vramobs.device_state(1), DeviceState.USABLE)
        check("usable", vramobs.usable_devices(), [1])
        # Never described before it failed: nothing cached, and no device call to find out
        # (cuGetErrorName, a name lookup, is not counted).
        before, names = call_counts(), calls("cuGetErrorName")
        raises("device_info(0)", vramobs.DeviceFailedError, vramobs.device_info, 0)
        check("device_info(0): driver calls",
              calls("*") - before["*"] - (calls("cuGetErrorName") - names), 0)

        # The (global) fake fault cleared: device 1 serves, device 0 stays latched.
        fake().fakecuda_reset()
        live0 = live()
        data = randbytes(rnd, 2049)
        with vramobs.to_device(data, device=1) as buf:
            check("round trip on device 1", buf.to_bytes() == data, True)
        check("device_info(1)", vramobs.device_info(1).name, "Fake CUDA Device 1")
        no_driver_call("alloc on device 0", raises, "alloc on device 0", vramobs.DeviceFailedError,
                       vramobs.alloc, 64, device=0)
        check("fake live", live(), live0)
        finish()
        """,
        FAKECUDA_DEVICES=2,
    )


def test_failed_free_in_buffer_close_leaves_the_allocation_live_and_reported(child):
    """A non-sticky free failure keeps the allocation live (status 9); through the raw API
    it is freed later (the matrix); here the registry must keep reporting it."""
    child(
        r"""
        rnd = random.Random(SEED)
        live0 = live()
        data = randbytes(rnd, 4095)
        buf = vramobs.to_device(data)
        address = buf.ptr
        inject("cuMemFree", 2, 1)
        exc = raises("close", vramobs.DriverError, buf.close)
        if exc is not None:
            check("driver_error_name", exc.driver_error_name, "CUDA_ERROR_OUT_OF_MEMORY")
        check("registry still lists it", [(a.address, a.nbytes) for a in stats.live_allocations()],
              [(address, 4095)])
        check("fake still holds it", live(), live0 + 1)
        check("memory intact", ctypes.string_at(address, 4095) == data, True)
        check("raw.free", raw.free(address), 0)
        check("fake after raw.free", live(), live0)
        finish()
        """
    )


def test_device_info_error_does_not_reuse_a_stale_last_error(child):
    child(
        r"""
        inject("cuMemAlloc", 700, 1, True)
        raises("alloc", vramobs.DeviceFailedError, vramobs.alloc, 100)
        before = call_counts()
        exc = raises("device_info(0)", vramobs.DeviceFailedError, vramobs.device_info, 0)
        check("driver calls", delta(call_counts(), before), {})
        if exc is not None:
            check("op of device_info's error", exc.op, None)
            check("driver error of device_info's error", (exc.driver_error, exc.driver_error_name), (0, None))
        finish()
        """
    )


def test_buffer_close_can_be_retried_after_a_non_sticky_free_failure(child):
    child(
        r"""
        rnd = random.Random(SEED)
        live0 = live()
        data = randbytes(rnd, 4095)
        buf = vramobs.to_device(data)
        address = buf.ptr
        inject("cuMemFree", 2, 1)
        raises("close", vramobs.DriverError, buf.close)
        check("buffer still open after a failed close", buf.closed, False)
        try:
            buf.close()  # the fault is used up: this must free it
        finally:
            released = stats.registry_stats().live_count == 0
            check("registry after the retried close", stats.registry_stats().live_count, 0)
            check("fake after the retried close", live(), live0)
            if not released:
                raw.free(address)  # tidy up for the report
        finish()
        """
    )


# ---------------------------------------------------------------------------------------------
# Driver load failures.
# ---------------------------------------------------------------------------------------------

_LOAD_CHILD = r"""
expected = os.environ["CASE_EXPECT"]
fake_loaded = os.environ["CASE_FAKE"] == "1"
check("backend", vramobs.backend(), "cuda")
diagnostic = vramobs.backend_diagnostic()
check_true("diagnostic", expected in diagnostic, repr(diagnostic))
exc = raises("alloc", vramobs.NoDeviceError, vramobs.alloc, 64)
if exc is not None:
    check("code", exc.code, 4)
    check_true("message", expected in str(exc), repr(str(exc)))
for name, fn in (("device_count", vramobs.device_count), ("get_info", vramobs.get_info),
                 ("device_info", lambda: vramobs.device_info(0))):
    exc = raises(name, vramobs.NoDeviceError, fn)
    if exc is not None:
        check_true(f"{name} message", expected in str(exc), repr(str(exc)))
check("usable_devices", vramobs.usable_devices(), [])
check("device_state", vramobs.device_state(0), DeviceState.UNAVAILABLE)
check("raw.malloc", raw.malloc(64), (4, 0))
check("raw.get_info", raw.get_info(), (4, 0, 0))
src, src_addr = host(b"\x5a" * 8)
check("raw.memcpy_h2d", raw.memcpy_h2d(0x10000, src_addr, 8), 4)
check("raw.free", raw.free(0x10000), 4)
check("malloc counted", by_status("malloc"), {"VRAM_ERR_NO_DEVICE": 2})
if fake_loaded:
    check("no memory function reached", {f: calls(f) for f in MEM_FUNCTIONS}, {f: 0 for f in MEM_FUNCTIONS})
    check("cuInit called once", calls("cuInit"), 1)
finish(diagnostic=diagnostic)
"""


def _load_failures():
    cases = [
        pytest.param({"FAKECUDA_INIT_ERROR": "100"}, "cuInit failed: CUDA_ERROR_NO_DEVICE", True,
                     id="cuinit_no_device"),
        pytest.param({"FAKECUDA_DEVICES": "0"}, "no CUDA device", True, id="zero_devices"),
        pytest.param({"VRAMOBS_CUDA_DRIVER": "/nonexistent/libcuda.so.1"},
                     "cannot load the NVIDIA driver library /nonexistent/libcuda.so.1", False,
                     id="no_library"),
    ]
    libc = ctypes.util.find_library("c")
    cases.append(
        pytest.param({"VRAMOBS_CUDA_DRIVER": libc or "libc"}, "lacks the symbol cuInit", False,
                     id="missing_symbols",
                     marks=pytest.mark.skipif(libc is None, reason="no libc found to load"))
    )
    return cases


@pytest.mark.parametrize("env, expected, fake_loaded", _load_failures())
def test_driver_load_failures(child, env, expected, fake_loaded):
    result = child(_LOAD_CHILD, CASE_EXPECT=expected, CASE_FAKE=int(fake_loaded), **env)
    assert expected in result["diagnostic"]


# ---------------------------------------------------------------------------------------------
# Refusals never reach the driver.
# ---------------------------------------------------------------------------------------------


def test_refusals_never_reach_the_driver(child):
    child(
        r"""
        rnd = random.Random(SEED)
        live0 = live()
        data = randbytes(rnd, 1000)
        a = vramobs.to_device(data)
        src, src_addr = host(randbytes(rnd, 2048))
        dst, dst_addr = host(randbytes(rnd, 2048))
        free_ref0, h2d_ref0, d2h_ref0 = refused("free"), refused("memcpy_h2d"), refused("memcpy_d2h")
        reg0 = stats.registry_stats()

        # Double free: raw and through a buffer.
        status, p = raw.malloc(600)
        check("raw.malloc", status, 0)
        frees = calls("cuMemFree")
        check("first free", raw.free(p), 0)
        check("first free reached the driver", calls("cuMemFree") - frees, 1)
        check("double free", no_driver_call("double free", raw.free, p), 0)
        check("repeated_frees_total", stats.registry_stats().repeated_frees_total - reg0.repeated_frees_total, 1)
        b = vramobs.to_device(randbytes(rnd, 300))
        b.close()
        no_driver_call("second close", b.close)

        # Interior and unknown pointers.
        check("interior free +1", no_driver_call("interior free", raw.free, a.ptr + 1), 7)
        check("interior free +512", no_driver_call("interior free", raw.free, a.ptr + 512), 7)
        check("unknown free (host memory)", no_driver_call("unknown free", raw.free, src_addr), 5)
        check("unknown free (made up)", no_driver_call("unknown free", raw.free, 0xdead0000), 5)
        check("free refusals", delta(refused("free"), free_ref0),
              {"interior_pointer": 2, "unknown_pointer": 2})

        # Out-of-bounds copies, in C and in Python.
        check("h2d past the end", no_driver_call("h2d oob", raw.memcpy_h2d, a.ptr + 999, src_addr, 2), 6)
        check("d2h past the end", no_driver_call("d2h oob", raw.memcpy_d2h, dst_addr, a.ptr, 1001), 6)
        check("d2h inside, one byte over", no_driver_call("d2h oob", raw.memcpy_d2h, dst_addr, a.ptr + 501, 500), 6)
        no_driver_call("copy_from oob", raises, "copy_from oob", vramobs.OutOfBoundsError, a.copy_from, bytes(1001))
        no_driver_call("copy_from offset oob", raises, "copy_from offset oob", vramobs.OutOfBoundsError,
                       a.copy_from, data, offset=1)
        no_driver_call("copy_to oob", raises, "copy_to oob", vramobs.OutOfBoundsError, a.copy_to, bytearray(999), offset=2)
        check("h2d from an unknown device address", no_driver_call("h2d unknown", raw.memcpy_h2d, src_addr, dst_addr, 8), 5)
        check("d2h wrapping the address space",
              no_driver_call("d2h wrap", raw.memcpy_d2h, dst_addr, a.ptr, (1 << 64) - 16), 2)

        # Copies into and out of a freed buffer.
        c = vramobs.to_device(randbytes(rnd, 256))
        freed = c.ptr
        c.close()
        check("h2d into a freed buffer", no_driver_call("h2d freed", raw.memcpy_h2d, freed, src_addr, 16), 5)
        check("d2h from a freed buffer", no_driver_call("d2h freed", raw.memcpy_d2h, dst_addr, freed, 16), 5)
        no_driver_call("copy_from closed", raises, "copy_from closed", ValueError, c.copy_from, b"\x01" * 16)
        no_driver_call("copy_to closed", raises, "copy_to closed", ValueError, c.copy_to, bytearray(16))
        check("h2d refusals", delta(refused("memcpy_h2d"), h2d_ref0),
              {"out_of_bounds": 1, "unknown_pointer": 1, "freed_pointer": 1})
        check("d2h refusals", delta(refused("memcpy_d2h"), d2h_ref0),
              {"out_of_bounds": 2, "range_wrap": 1, "freed_pointer": 1})
        # Inside a freed buffer (its tombstone is its start address): still refused.
        check("d2h from inside a freed buffer",
              no_driver_call("d2h inside freed", raw.memcpy_d2h, dst_addr, freed + 8, 16), 5)
        check("h2d into inside a freed buffer",
              no_driver_call("h2d inside freed", raw.memcpy_h2d, freed + 255, src_addr, 1), 5)

        # Null pointers and zero sizes.
        check("malloc 0", no_driver_call("malloc 0", raw.malloc, 0), (2, 0))
        no_driver_call("alloc 0", raises, "alloc 0", vramobs.InvalidArgumentError, vramobs.alloc, 0)
        check("h2d null src", no_driver_call("h2d null", raw.memcpy_h2d, a.ptr, 0, 8), 2)
        check("h2d null dst", no_driver_call("h2d null", raw.memcpy_h2d, 0, src_addr, 8), 2)
        check("h2d zero bytes", no_driver_call("h2d zero", raw.memcpy_h2d, a.ptr, src_addr, 0), 2)
        check("free NULL", no_driver_call("free NULL", raw.free, 0), 0)

        check("a untouched", a.to_bytes() == data, True)
        a.close()
        check("fake live", live(), live0)
        check("registry live", stats.registry_stats().live_count, 0)
        check("device still usable", vramobs.device_state(0), DeviceState.USABLE)
        finish()
        """
    )


# ---------------------------------------------------------------------------------------------
# Concurrency.
# ---------------------------------------------------------------------------------------------


def test_concurrent_cycles(child):
    result = child(
        r"""
        THREADS, CYCLES = 8, 300
        live0, live_bytes0 = live(), live_bytes()
        reg0 = stats.registry_stats()
        counts0 = call_counts()
        malloc0 = by_status("malloc")
        shared_data = randbytes(random.Random(SEED), 65537)
        shared = vramobs.to_device(shared_data)
        failures = []
        barrier = threading.Barrier(THREADS)

        def worker(index):
            rnd = random.Random(SEED + 1 + index)
            device = index % 2
            try:
                barrier.wait()
                for cycle in range(CYCLES):
                    n = rnd.randrange(1, 8192)
                    data = randbytes(rnd, n)
                    with vramobs.alloc(n, device=device) as buf:
                        buf.copy_from(data)
                        out = bytearray(n)
                        buf.copy_to(out)
                        if out != data:
                            failures.append(f"thread {index} cycle {cycle}: read back differs")
                        offset = rnd.randrange(n)
                        length = rnd.randrange(1, n - offset + 1)
                        patch = randbytes(rnd, length)
                        buf.copy_from(patch, offset=offset)
                        expected = data[:offset] + patch + data[offset + length:]
                        if buf.to_bytes(offset, length) != patch:
                            failures.append(f"thread {index} cycle {cycle}: patch differs")
                        if ctypes.string_at(buf.ptr, n) != expected:
                            failures.append(f"thread {index} cycle {cycle}: device memory differs")
                    if cycle % 25 == 0 and shared.to_bytes() != shared_data:
                        failures.append(f"thread {index} cycle {cycle}: shared buffer differs")
                if current_context() != (0, None):
                    failures.append(f"thread {index}: a context was left current")
            except BaseException:
                failures.append(f"thread {index}: {traceback.format_exc()}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        check("threads finished", [t.is_alive() for t in threads], [False] * THREADS)
        check("failures", failures[:5], [])
        shared.close()

        cycles = THREADS * CYCLES
        check("fake live allocations back", live(), live0)
        check("fake live bytes back", live_bytes(), live_bytes0)
        reg = stats.registry_stats()
        check("registry live", reg.live_count, 0)
        check("allocs_total", reg.allocs_total - reg0.allocs_total, cycles + 1)
        check("frees_total", reg.frees_total - reg0.frees_total, cycles + 1)
        check("per device", (stats.registry_stats(0).allocs_total, stats.registry_stats(1).allocs_total),
              (cycles // 2 + 1, cycles // 2))
        check("malloc statuses", delta(by_status("malloc"), malloc0), {"VRAM_SUCCESS": cycles + 1})
        d = delta(call_counts(), counts0)
        check("driver allocations", d.get("cuMemAlloc"), cycles + 1)
        check("driver frees", d.get("cuMemFree"), cycles + 1)
        check("get_info per device", (tuple(vramobs.get_info(0)), tuple(vramobs.get_info(1))),
              ((fake_free(GiB, 64 * MiB, []), GiB),) * 2)
        finish(cycles=cycles)
        """,
        timeout=120,
        FAKECUDA_DEVICES=2,
    )
    assert result["cycles"] == 2400
