"""Staging on the real CUDA backend over the fake driver: pageable copies of at least
min_bytes go through the engine's pinned buffers (cuMemcpy*Async), byte for byte at odd sizes
and offsets; pinned memory goes direct; configuration, concurrency, driver faults in the
middle of a copy, and the clearing of staging buffers that carried wiped allocations."""

import textwrap

import pytest

# Shared by every child: numpy data, the fake's resource counters, a staging setting.
HELPERS = r"""
import numpy as np
from vramobs import pinned

KiB, CHUNK = 1024, 256 * 1024
rng = np.random.default_rng(SEED)


def counters():
    f = fake()
    for name in ("fakecuda_live_streams", "fakecuda_live_events", "fakecuda_live_host_allocations"):
        getattr(f, name).restype = ctypes.c_long
    return {
        "streams": f.fakecuda_live_streams(),
        "events": f.fakecuda_live_events(),
        "host_allocations": f.fakecuda_live_host_allocations(),
        "threads": len(os.listdir("/proc/self/task")),
    }


def fresh(n):
    return rng.integers(0, 256, n, dtype=np.uint8)


def odd_view(n, shift):
    # A host array of n bytes that starts `shift` bytes into a larger one: an odd address.
    backing = np.zeros(n + shift, dtype=np.uint8)
    return backing[shift:]


def round_trip(dev, n, dev_offset, host_shift):
    data = odd_view(n, host_shift)
    data[:] = fresh(n)
    dev.copy_from(data, offset=dev_offset)
    out = odd_view(n, host_shift + 3)
    dev.copy_to(out, offset=dev_offset)
    return np.array_equal(out, data)
"""


def run(child, code, **env):
    return child(HELPERS + textwrap.dedent(code), timeout=120, **env)


def test_odd_sizes_and_offsets_byte_for_byte(child):
    run(
        child,
        r"""
        cfg = pinned.configure_staging(threads=3, chunk_bytes=CHUNK, min_bytes=64 * KiB, buffers=2)
        check("config", (cfg.threads, cfg.chunk_bytes, cfg.min_bytes, cfg.buffers), (3, CHUNK, 64 * KiB, 2))
        sizes = [64 * KiB, CHUNK - 1, CHUNK + 1, 3 * CHUNK + 17, 6 * CHUNK - 5, 19 * CHUNK + 4095,
                 (5 << 20) + 3]
        with vramobs.alloc(max(sizes) + 4096) as dev:
            for n in sizes:
                for dev_offset, shift in ((0, 0), (1, 7), (4093, 1), (255, 4095)):
                    before = pinned.host_stats().staged_copies_total
                    async_before = calls("cuMemcpyHtoDAsync"), calls("cuMemcpyDtoHAsync")
                    sync_before = calls("cuMemcpyHtoD"), calls("cuMemcpyDtoH")
                    check(f"{n}@{dev_offset}+{shift}", round_trip(dev, n, dev_offset, shift), True)
                    check(f"{n} staged", pinned.host_stats().staged_copies_total - before, 2)
                    check_true(f"{n} chunked", calls("cuMemcpyHtoDAsync") - async_before[0] >= 1)
                    check_true(f"{n} chunked d2h", calls("cuMemcpyDtoHAsync") - async_before[1] >= 1)
                    check(f"{n} no direct", (calls("cuMemcpyHtoD"), calls("cuMemcpyDtoH")), sync_before)
            # Below min_bytes: the driver directly, not staged.
            before = pinned.host_stats().staged_copies_total
            h2d = calls("cuMemcpyHtoD")
            check("small", round_trip(dev, 64 * KiB - 1, 5, 3), True)
            check("small not staged", pinned.host_stats().staged_copies_total, before)
            check("small direct", calls("cuMemcpyHtoD") - h2d, 1)
            # Chunk count: the copy is cut so every buffer of every thread carries one chunk.
            a = calls("cuMemcpyHtoDAsync")
            n = 6 * CHUNK
            dev.copy_from(fresh(n))
            check("chunks of a 6-chunk copy", calls("cuMemcpyHtoDAsync") - a, 6)
        stats_now = pinned.host_stats()
        check("staging bytes: 3 threads x 2 buffers x 2 directions", stats_now.staging_bytes, 12 * CHUNK)
        finish()
        """,
    )


def test_pinned_and_registered_memory_skip_staging(child):
    run(
        child,
        r"""
        pinned.configure_staging(threads=2, chunk_bytes=CHUNK, min_bytes=4 * KiB)
        n = 3 * CHUNK + 5
        with vramobs.alloc(n + 1) as dev, pinned.pinned_empty(n + 100) as host:
            arr = host.numpy()
            arr[:] = fresh(n + 100)
            before = pinned.host_stats().staged_copies_total
            h2d, d2h = calls("cuMemcpyHtoD"), calls("cuMemcpyDtoH")
            dev.copy_from(host.view[13:13 + n], offset=1)
            out = pinned.pinned_empty(n)
            dev.copy_to(out.view, offset=1)
            check("pinned round trip", np.array_equal(out.numpy(), arr[13:13 + n]), True)
            check("direct", (calls("cuMemcpyHtoD") - h2d, calls("cuMemcpyDtoH") - d2h), (1, 1))
            check("not staged", pinned.host_stats().staged_copies_total, before)
            out.close()
            del arr
            # A registered numpy array: direct too, until it is unregistered.
            data = fresh(n)
            with pinned.register_host(data) as reg:
                check("registered", pinned.host_stats().registered_bytes, n)
                check("live registrations", fake().fakecuda_live_registrations(), 1)
                h2d = calls("cuMemcpyHtoD")
                dev.copy_from(data)
                check("registered direct", calls("cuMemcpyHtoD") - h2d, 1)
            check("unregistered", (pinned.host_stats().registered_bytes, fake().fakecuda_live_registrations()), (0, 0))
            dev.copy_from(data)
            check("staged after unregister", pinned.host_stats().staged_copies_total, before + 1)
            check("device holds the data", dev.to_bytes(0, n) == data.tobytes(), True)
        finish()
        """,
    )


def test_threads_zero_turns_staging_off_and_releases_buffers(child):
    run(
        child,
        r"""
        pinned.configure_staging(threads=2, chunk_bytes=CHUNK, min_bytes=4 * KiB)
        base = counters()
        n = 2 * CHUNK + 9
        with vramobs.alloc(n + 3) as dev:
            check("staged", round_trip(dev, n, 0, 1), True)
            check("made", pinned.host_stats().staging_bytes, 2 * 2 * CHUNK * 2)
            check("streams", counters()["streams"] - base["streams"], 4)
            pinned.configure_staging(threads=0)
            check("released", pinned.host_stats().staging_bytes, 0)
            check("all released", counters(), base)
            before = pinned.host_stats().staged_copies_total
            a = calls("cuMemcpyHtoDAsync")
            check("direct", round_trip(dev, n, 3, 5), True)
            check("nothing staged", (pinned.host_stats().staged_copies_total, calls("cuMemcpyHtoDAsync")), (before, a))
            # A new shape applies to the next copy: 1 thread of 4 buffers of 64 KiB.
            pinned.configure_staging(threads=1, chunk_bytes=64 * KiB, buffers=4)
            check("rebuilt", round_trip(dev, n, 0, 0), True)
            check("new staging bytes", pinned.host_stats().staging_bytes, 2 * 4 * 64 * KiB)
        finish()
        """,
    )


def test_configuration_is_validated(child):
    run(
        child,
        r"""
        before = pinned.staging_config()
        cpus = os.cpu_count()
        threads = 16 if cpus >= 32 else cpus // 2 if cpus >= 8 else 4
        check("defaults", (before.threads, before.chunk_bytes, before.min_bytes, before.buffers), (threads, 2 << 20, 1 << 20, 2))
        for bad in ({"threads": 65}, {"chunk_bytes": 4095}, {"chunk_bytes": (1 << 30) + 1},
                    {"buffers": 0}, {"buffers": 17}, {"threads": -1}, {"min_bytes": 1.5}):
            exc = raises(f"{bad}", errors.InvalidArgumentError, pinned.configure_staging, **bad)
            check(f"{bad} reason", getattr(exc, "reason", None), "invalid_config")
        check("unchanged", pinned.staging_config(), before)
        raw_cfg = vramobs._native.StagingConfig(struct_size=8, threads=1, chunk_bytes=4096, buffers=1)
        check("struct_size", vramobs._native.lib().vram_staging_set(ctypes.byref(raw_cfg)), 2)
        finish()
        """,
    )


def test_environment_sets_the_configuration_and_a_bad_value_turns_it_off(child):
    run(
        child,
        r"""
        cfg = pinned.staging_config()
        check("env", (cfg.threads, cfg.chunk_bytes, cfg.min_bytes, cfg.buffers), (5, 65536, 12345, 3))
        finish()
        """,
        VRAMOBS_STAGING_THREADS=5,
        VRAMOBS_STAGING_CHUNK_BYTES=65536,
        VRAMOBS_STAGING_MIN_BYTES=12345,
        VRAMOBS_STAGING_BUFFERS=3,
    )
    run(
        child,
        r"""
        check("off", pinned.staging_config().threads, 0)
        finish()
        """,
        VRAMOBS_STAGING_THREADS="8x",
    )


def test_concurrent_copies_in_both_directions(child):
    run(
        child,
        r"""
        pinned.configure_staging(threads=3, chunk_bytes=CHUNK, min_bytes=16 * KiB)
        failures = []

        def worker(index):
            local = np.random.default_rng(SEED + index)
            try:
                with vramobs.alloc(4 * CHUNK + 77) as dev:
                    for round_ in range(12):
                        n = int(local.integers(16 * KiB, 4 * CHUNK + 77))
                        shift = int(local.integers(0, 64))
                        data = np.zeros(n + shift, np.uint8)[shift:]
                        data[:] = local.integers(0, 256, n, dtype=np.uint8)
                        offset = int(local.integers(0, 4 * CHUNK + 77 - n + 1))
                        dev.copy_from(data, offset=offset)
                        out = np.empty(n, np.uint8)
                        dev.copy_to(out, offset=offset)
                        if not np.array_equal(out, data):
                            failures.append((index, round_, n, offset))
            except Exception as exc:  # reported below
                failures.append((index, repr(exc)))

        def reconfigure():
            for threads in (2, 4, 3):
                pinned.configure_staging(threads=threads)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        threads.append(threading.Thread(target=reconfigure))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check("failures", failures, [])
        check_true("staged", pinned.host_stats().staged_copies_total >= 6 * 12 * 2 - 1)
        finish()
        """,
    )


@pytest.mark.parametrize(
    "function,direction,nth",
    [
        ("cuMemcpyHtoDAsync", "h2d", 3),
        ("cuMemcpyDtoHAsync", "d2h", 3),
        ("cuEventSynchronize", "h2d", 3),
        ("cuEventRecord", "d2h", 3),
        ("cuStreamSynchronize", "h2d", 2),  # one per worker and copy: the second worker's
    ],
)
def test_a_driver_fault_mid_copy_returns_its_code_and_leaks_nothing(child, function, direction, nth):
    run(
        child,
        r"""
        function, direction = os.environ["CASE_FUNCTION"], os.environ["CASE_DIRECTION"]
        pinned.configure_staging(threads=2, chunk_bytes=CHUNK, min_bytes=16 * KiB)
        n = 8 * CHUNK + 1
        with vramobs.alloc(n) as dev:
            check("warm up", round_trip(dev, n, 0, 0), True)  # both engines made
            base = counters()
            data = fresh(n)
            out = np.empty(n, np.uint8)
            inject(function, 1, nth=int(os.environ["CASE_NTH"]))  # INVALID_VALUE: not sticky
            copy = (lambda: dev.copy_from(data)) if direction == "h2d" else (lambda: dev.copy_to(out))
            exc = raises("fault", errors.CopyError, copy)
            check("driver error", getattr(exc, "driver_error", None), 1)
            check("driver error name", getattr(exc, "driver_error_name", None), "CUDA_ERROR_INVALID_VALUE")
            check("nothing leaked", counters(), base)
            check("usable", vramobs.device_state(0), DeviceState.USABLE)
            check("next copy works", round_trip(dev, n - 1, 1, 1), True)
            check("still nothing leaked", counters(), base)
        finish()
        """,
        CASE_FUNCTION=function,
        CASE_DIRECTION=direction,
        CASE_NTH=nth,
    )


def test_a_failed_engine_setup_fails_the_copy_and_is_retried(child):
    run(
        child,
        r"""
        pinned.configure_staging(threads=3, chunk_bytes=CHUNK, min_bytes=16 * KiB)
        base = counters()
        n = 2 * CHUNK
        with vramobs.alloc(n) as dev:
            inject("cuMemHostAlloc", 2, nth=4)  # the third thread's second buffer
            exc = raises("setup", errors.CopyError, dev.copy_from, fresh(n))
            check("code", getattr(exc, "driver_error", None), 2)
            check("torn down", counters(), base)
            check("no staging memory", pinned.host_stats().staging_bytes, 0)
            check("retried", round_trip(dev, n, 0, 0), True)
        finish()
        """,
    )


def test_a_sticky_fault_mid_copy_latches_the_device(child):
    run(
        child,
        r"""
        pinned.configure_staging(threads=2, chunk_bytes=CHUNK, min_bytes=16 * KiB)
        n = 6 * CHUNK
        with vramobs.alloc(n) as dev:
            dev.copy_from(fresh(n))
            threads_before = counters()["threads"]
            inject("cuMemcpyHtoDAsync", 700, nth=2, sticky=True)
            raises("sticky", errors.DeviceFailedError, dev.copy_from, fresh(n))
            check("failed", vramobs.device_state(0), DeviceState.FAILED)
            check("no thread leaked", counters()["threads"], threads_before)
            try:
                dev.close()
            except errors.DeviceFailedError:
                pass
        finish()
        """,
    )


def test_staging_buffers_that_carried_wiped_bytes_are_cleared(child):
    run(
        child,
        r"""
        pinned.configure_staging(threads=2, chunk_bytes=CHUNK, min_bytes=16 * KiB, buffers=2)
        capacity = 2 * 2 * CHUNK
        n = 3 * CHUNK + 11
        cleared = lambda: pinned.host_stats().staging_cleared_bytes_total
        with vramobs.alloc(n, wipe=False) as plain:
            check("plain round trip", round_trip(plain, n, 0, 0), True)
        check("plain: nothing cleared", cleared(), 0)
        with vramobs.alloc(n, wipe=True) as secret:
            before = cleared()
            secret.copy_from(fresh(n))
            h2d = cleared() - before
            check_true("h2d cleared", 0 < h2d <= min(n, capacity), f"{h2d}")
            before = cleared()
            out = np.empty(n, np.uint8)
            secret.copy_to(out)
            d2h = cleared() - before
            check_true("d2h cleared", 0 < d2h <= min(n, capacity), f"{d2h}")
            # A small copy (below min_bytes) is not staged: nothing to clear.
            before = cleared()
            secret.copy_from(fresh(1000))
            check("small", cleared(), before)
        # Under the process-wide policy too.
        vramobs.set_wipe_on_free(True)
        with vramobs.alloc(n) as policy:
            before = cleared()
            policy.copy_from(fresh(n))
            check_true("policy cleared", cleared() > before)
        finish()
        """,
    )


def test_numa_node_from_sysfs_binds_the_workers(child, tmp_path):
    import os

    cpu = min(os.sched_getaffinity(0))
    root = tmp_path / "pci"
    device = root / "0000:00:00.0"  # the fake's device 0
    device.mkdir(parents=True)
    (device / "numa_node").write_text("0\n")
    (device / "local_cpulist").write_text(f"{cpu}\n")
    run(
        child,
        r"""
        cpu = int(os.environ["CASE_CPU"])
        check("node", pinned.host_numa_node(0), 0)
        pinned.configure_staging(threads=3, chunk_bytes=CHUNK, min_bytes=16 * KiB)
        mine = os.sched_getaffinity(0)
        with vramobs.alloc(CHUNK * 4) as dev:
            check("copy", round_trip(dev, CHUNK * 4, 0, 0), True)
        bound = [t for t in os.listdir("/proc/self/task") if os.sched_getaffinity(int(t)) == {cpu}]
        check("workers bound", len(bound), 6)
        check("caller untouched", os.sched_getaffinity(0), mine)
        # A pinned block is allocated on the node: the caller's affinity is restored after.
        with pinned.pinned_empty(4096):
            check("caller restored", os.sched_getaffinity(0), mine)
        raises("bad device", errors.InvalidArgumentError, pinned.host_numa_node, 5)
        finish()
        """,
        VRAMOBS_SYSFS_PCI_DEVICES=str(root),
        CASE_CPU=cpu,
    )


@pytest.mark.parametrize("node,cpulist", [("-1", "0"), ("0", "bogus"), (None, None)])
def test_numa_node_unknown_binds_nothing(child, tmp_path, node, cpulist):
    root = tmp_path / "pci"
    device = root / "0000:00:00.0"
    device.mkdir(parents=True)
    if node is not None:
        (device / "numa_node").write_text(node + "\n")
        (device / "local_cpulist").write_text(cpulist + "\n")
    run(
        child,
        r"""
        check("node", pinned.host_numa_node(0), -1)
        pinned.configure_staging(threads=2, chunk_bytes=CHUNK, min_bytes=16 * KiB)
        mine = os.sched_getaffinity(0)
        with vramobs.alloc(CHUNK * 2) as dev:
            check("copy", round_trip(dev, CHUNK * 2, 0, 0), True)
        same = [t for t in os.listdir("/proc/self/task") if os.sched_getaffinity(int(t)) == mine]
        check("nothing bound", len(same), len(os.listdir("/proc/self/task")))
        finish()
        """,
        VRAMOBS_SYSFS_PCI_DEVICES=str(root),
    )
