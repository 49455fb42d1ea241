import os
import threading
import time
from collections import Counter

import numpy as np

import vramobs
from vramobs import raw, stats

THREADS = 16


def run_threads(target, count=THREADS):
    """Run target(index, barrier) on count threads; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors = []

    def guarded(index):
        try:
            target(index, barrier)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_registry_stress(rng):
    seeds = rng.integers(0, 2**63, size=THREADS)
    tags = [None, "weights", "kv_cache", "activations"]
    before = stats.registry_stats()
    done = [Counter() for _ in range(THREADS)]

    def worker(index, barrier):
        r = np.random.default_rng(int(seeds[index]))
        count = done[index]
        mine = {}  # buffer -> bytearray model of its contents
        barrier.wait()
        for _ in range(3000):
            action = r.integers(0, 4) if mine else 0
            if action == 0 and len(mine) < 8:
                data = os.urandom(int(r.integers(1, 16_384)))
                mine[vramobs.to_device(data, tag=tags[int(r.integers(0, 4))])] = bytearray(data)
                count["alloc"] += 1
            elif action == 1:
                buf = list(mine)[int(r.integers(0, len(mine)))]
                offset = int(r.integers(0, buf.nbytes))
                chunk = os.urandom(int(r.integers(1, buf.nbytes - offset + 1)))
                buf.copy_from(chunk, offset)
                mine[buf][offset : offset + len(chunk)] = chunk
                count["copy"] += 1
            elif action == 2:
                buf = list(mine)[int(r.integers(0, len(mine)))]
                assert buf.to_bytes() == mine[buf]
                count["verify"] += 1
            elif mine:
                buf = list(mine)[int(r.integers(0, len(mine)))]
                assert buf.to_bytes() == mine.pop(buf)
                buf.close()
                count["free"] += 1
        for buf, model in mine.items():
            assert buf.to_bytes() == model
            buf.close()

    run_threads(worker)
    total = sum(done, Counter())
    after = stats.registry_stats()
    assert after.live_count == before.live_count
    assert after.live_bytes == before.live_bytes
    assert after.allocs_total - before.allocs_total == total["alloc"]
    assert after.frees_total - before.frees_total == total["alloc"]
    assert after.stale_evicted_total == before.stale_evicted_total
    assert all(min(c[a] for c in done) > 100 for a in ("alloc", "copy", "verify", "free"))


def _copy_until_refused(direction, address, host, expected, statuses):
    """Copy the whole allocation until a copy is refused; check every successful read."""
    nbytes = host.nbytes
    while True:
        if direction == "d2h":
            np.bitwise_not(expected, out=host)
            status = raw.memcpy_d2h(host.ctypes.data, address, nbytes)
            if status == 0:
                assert np.array_equal(host, expected)
        else:
            status = raw.memcpy_h2d(address, host.ctypes.data, nbytes)
        statuses[status] += 1
        if status != 0:
            return


def _race(direction, op_watch, rng, iterations=30):
    nbytes = 8 << 20
    expected = np.frombuffer(os.urandom(nbytes), dtype=np.uint8)
    host = np.frombuffer(bytearray(os.urandom(nbytes)), dtype=np.uint8)
    statuses = Counter()
    watch = op_watch()
    for _ in range(iterations):
        status, address = raw.malloc(nbytes)
        assert status == 0
        assert raw.memcpy_h2d(address, expected.ctypes.data, nbytes) == 0
        delay = float(rng.uniform(0, 0.004))
        freed = []

        def copier(index, barrier):
            barrier.wait()
            _copy_until_refused(direction, address, host, expected, statuses)

        def freer(index, barrier):
            barrier.wait()
            time.sleep(delay)
            freed.append(raw.free(address))

        run_threads(lambda i, b: (copier if i == 0 else freer)(i, b), count=2)
        assert freed == [0]
    assert set(statuses) <= {0, 5}, statuses
    assert statuses[5] == iterations and statuses[0] > 0
    fills = iterations if direction == "h2d" else 0
    delta = watch(f"memcpy_{direction}")
    assert delta.refused == Counter({"freed_pointer": iterations})
    assert delta.by_status == Counter(
        {"VRAM_SUCCESS": statuses[0] + fills, "VRAM_ERR_UNKNOWN_POINTER": iterations}
    )


def test_device_to_host_copy_racing_free(op_watch, rng):
    _race("d2h", op_watch, rng)


def test_host_to_device_copy_racing_free(op_watch, rng):
    _race("h2d", op_watch, rng)


def test_concurrent_double_frees_free_once():
    iterations = 20
    before = stats.registry_stats()
    for _ in range(iterations):
        status, address = raw.malloc(4096)
        assert status == 0
        results = []

        def free(index, barrier):
            barrier.wait()
            results.append(raw.free(address))

        run_threads(free)
        assert results == [0] * THREADS
    after = stats.registry_stats()
    assert after.frees_total - before.frees_total == iterations
    assert after.repeated_frees_total - before.repeated_frees_total == iterations * (THREADS - 1)
    assert after.live_count == before.live_count


def test_concurrent_close_of_one_buffer_frees_once():
    buf = vramobs.alloc(4096)
    before = stats.registry_stats()

    def close(index, barrier):
        barrier.wait()
        buf.close()

    run_threads(close)
    after = stats.registry_stats()
    assert buf.closed
    assert after.frees_total - before.frees_total == 1
    assert after.repeated_frees_total == before.repeated_frees_total
