#!/usr/bin/env python3
"""GPU soak: threads of mixed vramobs operations near full VRAM, for a bounded time.

Run by tests/gpu/run.sh (``--seconds`` from VRAMOBS_GPU_SOAK_SECONDS, default 60):

1. Baseline: the driver's free memory (``vramobs.get_info``, i.e. cuMemGetInfo) once the
   context exists and an allocation of each size class, copied into and out of, has come and
   gone: the first copies cost the driver 8 MiB that it keeps for the life of the context
   (measured on the H100), which is no allocation of ours.
2. Ballast: one allocation takes all but ``--headroom-mib`` of what is free.
3. Threads allocate (sizes up to a third of the headroom, so that real out-of-memory is
   frequent), copy fresh random bytes in and out and verify them, copy past the end (refused
   with 6, nothing written), ask for more than the headroom (an injected out-of-memory, which
   must fail every time), query memory, and free, until the time is up; then they free all
   they hold. Every out-of-memory must be ``vramobs.OutOfMemoryError`` with the driver's
   out-of-memory error, and is counted.
4. The ballast goes, and then: no live allocation, 0 bytes in the registry, the library's
   per-operation counts equal to the threads' (calls by status, refusals), the device usable,
   and the driver's free memory back at the baseline within ``--tolerance-mib`` (default
   2 MiB: the driver maps device memory in 2 MiB pages, and a page of its own small-allocation
   heap may stay mapped; any leak of ours is at least one allocation, and the big ones are
   hundreds of MiB).

The last line is ``GPU SOAK: ok ...`` or ``GPU SOAK: FAILED ...``; run.sh folds it into its
``GPU SUITE:`` line. Exit status 0 when every check held, 1 when one failed, 2 without a GPU.
``--backend host`` runs the same soak on the host backend (emulated device memory, sized by
VRAMOBS_HOST_CAPACITY), to try the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
SHADOWED = 16 * MIB  # buffers up to this size are checked whole against a host copy
PIECE = 1 * MIB  # the most bytes one round trip moves


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak vramobs near full VRAM: mixed operations from many threads with "
        "real and injected out-of-memory, ending with nothing leaked and the driver's free "
        "memory back at its baseline.",
    )
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("VRAMOBS_GPU_SOAK_SECONDS", "60")),
                        help="how long the threads run (default: $VRAMOBS_GPU_SOAK_SECONDS or 60)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--slots", type=int, default=6,
                        help="buffers each thread may hold at once (default 6)")
    parser.add_argument("--headroom-mib", type=int, default=1536,
                        help="device memory left free beside the ballast (default 1536)")
    parser.add_argument("--tolerance-mib", type=float, default=2.0,
                        help="how far the driver's free memory may end from the baseline "
                        "(default 2: one page of the driver's)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's random choices")
    parser.add_argument("--backend", choices=("cuda", "host"), default="cuda",
                        help="cuda (default) or host, to try the script without a GPU")
    parser.add_argument("--json", metavar="PATH", help="also write the figures there as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1 or args.slots < 1 or args.headroom_mib < 64:
        parser.error("--seconds > 0, --threads >= 1, --slots >= 1 and --headroom-mib >= 64")
    return args


@dataclass
class Tally:
    """What one thread did, and what went wrong."""

    ops: Counter = field(default_factory=Counter)
    allocs: int = 0  # successful vram_malloc_ex calls
    frees: int = 0
    ooms: int = 0  # out-of-memory of allocations that might have fitted
    injected_ooms: int = 0  # allocations larger than the headroom: must fail
    h2d_ok: int = 0
    d2h_ok: int = 0
    refused: int = 0  # copies past the end, answered 6
    get_info: int = 0
    verified_bytes: int = 0
    failures: list = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)


class Held:
    """A buffer a thread holds, and what it must contain: all of it (shadow) for small
    buffers, the last piece written for large ones."""

    def __init__(self, buf, shadow) -> None:  # type: ignore[no-untyped-def]
        self.buf = buf
        self.shadow = shadow
        self.known: Optional[tuple[int, object]] = None  # (offset, bytes) for large buffers


class Soak:
    def __init__(self, args: argparse.Namespace, vramobs, np, headroom: int) -> None:  # type: ignore[no-untyped-def]
        self.args = args
        from vramobs import raw

        self.vramobs = vramobs
        self.raw = raw
        self.np = np
        self.headroom = headroom  # free device memory beside the ballast, measured
        self.oom_name = "CUDA_ERROR_OUT_OF_MEMORY" if args.backend == "cuda" else "HOST_ERROR_OUT_OF_MEMORY"

    # -- helpers -------------------------------------------------------------------------
    def size(self, rng) -> int:  # type: ignore[no-untyped-def]
        roll = rng.random()
        if roll < 0.5:
            return int(rng.integers(1, 64 * KIB + 1))
        if roll < 0.8:
            return int(rng.integers(64 * KIB, SHADOWED + 1))
        return int(rng.integers(SHADOWED, max(SHADOWED + 1, self.headroom // 3)))

    def fresh(self, rng, n: int):  # type: ignore[no-untyped-def]
        """Random bytes, none zero, so that zeroed memory never passes for written data."""
        return rng.integers(1, 256, n, dtype=self.np.uint8)

    def check_oom(self, tally: Tally, exc, what: str) -> None:  # type: ignore[no-untyped-def]
        if exc.code != 1 or exc.op != "malloc" or exc.driver_error_name != self.oom_name:
            tally.fail(f"{what}: code {exc.code} op {exc.op} driver error {exc.driver_error_name}")

    def verify(self, tally: Tally, held: Held) -> None:
        np = self.np
        if held.shadow is not None:
            back = np.zeros(held.buf.nbytes, np.uint8)
            held.buf.copy_to(back)
            tally.d2h_ok += 1
            if not np.array_equal(back, held.shadow):
                tally.fail(f"a {held.buf.nbytes} B buffer changed behind its back")
            tally.verified_bytes += back.size
        elif held.known is not None:
            offset, data = held.known
            back = np.zeros(len(data), np.uint8)
            held.buf.copy_to(back, offset)
            tally.d2h_ok += 1
            if not np.array_equal(back, data):
                tally.fail(f"{len(data)} B at {offset} of a {held.buf.nbytes} B buffer changed")
            tally.verified_bytes += back.size

    # -- operations ----------------------------------------------------------------------
    def alloc(self, tally: Tally, rng, slots: list) -> None:  # type: ignore[no-untyped-def]
        empty = [i for i, h in enumerate(slots) if h is None]
        if not empty:
            self.free(tally, rng, slots)
            return
        n = self.size(rng)
        try:
            buf = self.vramobs.alloc(n, tag="soak", wipe=bool(rng.random() < 0.1))
        except self.vramobs.OutOfMemoryError as exc:
            tally.ooms += 1
            self.check_oom(tally, exc, f"alloc({n})")
            return
        tally.allocs += 1
        shadow = None
        if n <= SHADOWED:
            shadow = self.fresh(rng, n)
            buf.copy_from(shadow)
            tally.h2d_ok += 1
        held = Held(buf, shadow)
        slots[empty[int(rng.integers(len(empty)))]] = held
        self.verify(tally, held)

    def free(self, tally: Tally, rng, slots: list) -> None:  # type: ignore[no-untyped-def]
        full = [i for i, h in enumerate(slots) if h is not None]
        if not full:
            self.alloc(tally, rng, slots)
            return
        i = full[int(rng.integers(len(full)))]
        self.verify(tally, slots[i])
        slots[i].buf.close()
        slots[i] = None
        tally.frees += 1

    def round_trip(self, tally: Tally, rng, slots: list) -> None:  # type: ignore[no-untyped-def]
        full = [h for h in slots if h is not None]
        if not full:
            self.alloc(tally, rng, slots)
            return
        held = full[int(rng.integers(len(full)))]
        size = held.buf.nbytes
        offset = int(rng.integers(size))
        n = int(rng.integers(1, min(size - offset, PIECE) + 1))
        data = self.fresh(rng, n)
        held.buf.copy_from(data, offset)
        tally.h2d_ok += 1
        if held.shadow is not None:
            held.shadow[offset:offset + n] = data
        else:
            held.known = (offset, data)
        back = self.np.zeros(n, self.np.uint8)
        held.buf.copy_to(back, offset)
        tally.d2h_ok += 1
        if not self.np.array_equal(back, data):
            tally.fail(f"{n} B at {offset} of a {size} B buffer read back wrong")
        tally.verified_bytes += n

    def past_the_end(self, tally: Tally, rng, slots: list) -> None:  # type: ignore[no-untyped-def]
        full = [h for h in slots if h is not None]
        if not full:
            self.alloc(tally, rng, slots)
            return
        held = full[int(rng.integers(len(full)))]
        size = held.buf.nbytes
        offset = size - int(rng.integers(1, min(size, PIECE) + 1))  # near the end: small copies
        n = size - offset + int(rng.integers(1, 4 * KIB))
        src = self.fresh(rng, n)
        status = self.raw.memcpy_h2d(held.buf.ptr + offset, src.ctypes.data, n)
        sentinel = self.fresh(rng, n)
        dst = sentinel.copy()
        status_back = self.raw.memcpy_d2h(dst.ctypes.data, held.buf.ptr + offset, n)
        tally.refused += 2
        if (status, status_back) != (6, 6):
            tally.fail(f"copies of {n} B at {offset} of a {size} B buffer answered {status}, {status_back}")
        if not self.np.array_equal(dst, sentinel):
            tally.fail("a refused device-to-host copy wrote into host memory")
        self.verify(tally, held)  # and it wrote nothing on the device

    def injected_oom(self, tally: Tally, rng, slots: list) -> None:  # type: ignore[no-untyped-def]
        n = self.headroom + 64 * MIB + int(rng.integers(GIB))
        try:
            buf = self.vramobs.alloc(n, tag="soak")
        except self.vramobs.OutOfMemoryError as exc:
            tally.injected_ooms += 1
            self.check_oom(tally, exc, f"injected alloc({n})")
            return
        tally.allocs += 1
        tally.fail(f"an allocation of {n} B, more than the headroom {self.headroom} B, succeeded")
        buf.close()
        tally.frees += 1

    def get_info(self, tally: Tally, rng, slots: list) -> None:  # type: ignore[no-untyped-def]
        info = self.vramobs.get_info()
        tally.get_info += 1
        if not 0 <= info.free <= min(info.total, self.headroom + self.args.tolerance_mib * MIB):
            tally.fail(f"get_info: free {info.free} of {info.total} with the ballast held "
                       f"(headroom {self.headroom})")

    # -- a thread ------------------------------------------------------------------------
    MIX = (("alloc", 0.30), ("free", 0.20), ("round_trip", 0.35), ("past_the_end", 0.05),
           ("injected_oom", 0.04), ("get_info", 0.06))

    def worker(self, tally: Tally, seed, deadline: float) -> None:  # type: ignore[no-untyped-def]
        rng = self.np.random.default_rng(seed)
        names = [name for name, _ in self.MIX]
        weights = self.np.array([w for _, w in self.MIX])
        weights = weights / weights.sum()
        slots: list = [None] * self.args.slots
        try:
            while time.monotonic() < deadline:
                name = names[int(rng.choice(len(names), p=weights))]
                tally.ops[name] += 1
                getattr(self, name)(tally, rng, slots)
        except Exception as exc:  # noqa: BLE001 - any exception is a failure to report
            tally.fail(f"{type(exc).__name__}: {exc}")
        finally:
            for i, held in enumerate(slots):
                if held is None:
                    continue
                try:
                    self.verify(tally, held)
                    held.buf.close()
                    tally.frees += 1
                except Exception as exc:  # noqa: BLE001
                    tally.fail(f"freeing at the end: {type(exc).__name__}: {exc}")
                slots[i] = None


def delta(after: dict, before: dict) -> dict:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


def run(args: argparse.Namespace) -> tuple[bool, dict, str]:
    import numpy as np

    import vramobs
    from vramobs import stats

    vramobs.use_backend(args.backend)
    try:
        vramobs.device_count()
    except vramobs.NoDeviceError as exc:
        return False, {"error": str(exc)}, f"not run (no device: {exc})"
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "little")
    print(f"soak: backend {vramobs.backend()}, device {vramobs.device_info(0).name}, "
          f"seed {seed}, {args.threads} threads, {args.seconds:g} s", flush=True)
    failures: list = []

    # 1. Baseline, once the context, the driver's heaps and its copy resources exist.
    for n in (256, 64 * KIB, 4 * MIB, 64 * MIB):
        data = np.ones(n, np.uint8)
        with vramobs.alloc(n) as buf:
            buf.copy_from(data)
            buf.copy_to(data)
    baseline = vramobs.get_info()
    ops0, reg0 = stats.op_stats(0), stats.registry_stats()
    if reg0.live_count:
        failures.append(f"{reg0.live_count} allocations live before the soak")

    # 2. Ballast: all but the headroom. The driver may not hand out every byte it calls free.
    ballast_target = baseline.free - args.headroom_mib * MIB
    ballast, ballast_ooms, ballast_size = None, 0, ballast_target
    while ballast is None and ballast_size > 0:
        try:
            ballast = vramobs.alloc(ballast_size, tag="soak_ballast")
        except vramobs.OutOfMemoryError:
            ballast_ooms += 1
            ballast_size -= 256 * MIB
    if ballast is None:
        return False, {"error": "no ballast"}, f"FAILED (no ballast of {ballast_target} B)"
    rng = np.random.default_rng(seed)
    tail = rng.integers(1, 256, MIB, dtype=np.uint8)
    ballast.copy_from(tail, ballast.nbytes - MIB)
    headroom = vramobs.get_info().free
    print(f"soak: baseline free {baseline.free} of {baseline.total} B; ballast {ballast_size} B "
          f"({ballast_ooms} smaller tries); headroom {headroom} B", flush=True)

    # 3. The threads.
    soak = Soak(args, vramobs, np, headroom)
    tallies = [Tally() for _ in range(args.threads)]
    seeds = np.random.SeedSequence(seed).spawn(args.threads)
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    threads = [threading.Thread(target=soak.worker, args=(t, s, deadline), name=f"soak-{i}")
               for i, (t, s) in enumerate(zip(tallies, seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0

    # 4. Release the ballast, then everything must be back.
    back = np.zeros(MIB, np.uint8)
    ballast.copy_to(back, ballast.nbytes - MIB)
    if not np.array_equal(back, tail):
        failures.append("the ballast's last MiB changed")
    ballast.close()
    after = vramobs.get_info()
    reg1, ops1 = stats.registry_stats(), stats.op_stats(0)

    total = Tally()
    for t in tallies:
        total.ops.update(t.ops)
        failures.extend(t.failures)
        for name in ("allocs", "frees", "ooms", "injected_ooms", "h2d_ok", "d2h_ok", "refused",
                     "get_info", "verified_bytes"):
            setattr(total, name, getattr(total, name) + getattr(t, name))
    ooms_all = total.ooms + total.injected_ooms + ballast_ooms
    allocs_all = total.allocs + 1  # and the ballast
    frees_all = total.frees + 1
    expected = {
        "malloc": {"VRAM_SUCCESS": allocs_all, "VRAM_ERR_ALLOCATION_FAILED": ooms_all},
        "free": {"VRAM_SUCCESS": frees_all},
        "memcpy_h2d": {"VRAM_SUCCESS": total.h2d_ok + 1, "VRAM_ERR_OUT_OF_BOUNDS": total.refused // 2},
        "memcpy_d2h": {"VRAM_SUCCESS": total.d2h_ok + 1, "VRAM_ERR_OUT_OF_BOUNDS": total.refused // 2},
        "get_info": {"VRAM_SUCCESS": total.get_info + 2},
    }
    for op, want in expected.items():
        got = delta(ops1[op].by_status, ops0[op].by_status)
        want = {k: v for k, v in want.items() if v}
        if got != want:
            failures.append(f"{op}: the library counted {got}, the threads {want}")
    if reg1.live_count or reg1.live_bytes or reg1.lost_total != reg0.lost_total:
        failures.append(f"registry at the end: {reg1.live_count} live, {reg1.live_bytes} B, "
                        f"{reg1.lost_total - reg0.lost_total} lost")
    if (reg1.allocs_total - reg0.allocs_total, reg1.frees_total - reg0.frees_total) != (allocs_all, frees_all):
        failures.append(f"registry: +{reg1.allocs_total - reg0.allocs_total} allocations, "
                        f"+{reg1.frees_total - reg0.frees_total} frees; the threads made "
                        f"{allocs_all} and freed {frees_all}")
    if vramobs.device_state(0) is not vramobs.DeviceState.USABLE:
        failures.append(f"device 0 is {vramobs.device_state(0)}")
    if total.ooms + total.injected_ooms == 0:
        failures.append("no out-of-memory happened")
    drift = baseline.free - after.free
    tolerance = int(args.tolerance_mib * MIB)
    if abs(drift) > tolerance:
        failures.append(f"driver free {after.free} B at the end, baseline {baseline.free} B "
                        f"(drift {drift} B, tolerance {tolerance} B)")

    figures = {
        "backend": vramobs.backend(), "device": vramobs.device_info(0).name, "seed": seed,
        "seconds": round(elapsed, 2), "threads": args.threads, "ops": sum(total.ops.values()),
        "ops_by_kind": dict(total.ops), "allocs": total.allocs, "frees": total.frees,
        "ooms": total.ooms, "injected_ooms": total.injected_ooms, "refused_copies": total.refused,
        "verified_bytes": total.verified_bytes, "ballast_bytes": ballast_size,
        "headroom_bytes": headroom, "baseline_free": baseline.free, "free_after": after.free,
        "drift_bytes": drift, "tolerance_bytes": tolerance, "live_after": reg1.live_count,
        "registry_bytes_after": reg1.live_bytes, "failures": failures,
    }
    ok = not failures
    # No semicolons: run.sh's summary line separates its parts with them.
    line = (f"{'ok' if ok else 'FAILED'} ({figures['ops']} ops in {elapsed:.0f} s on "
            f"{args.threads} threads: {total.ooms} out-of-memory + {total.injected_ooms} injected, "
            f"all OutOfMemoryError, {reg1.live_count} live, {reg1.live_bytes} B in the registry, "
            f"driver free {drift} B from baseline (tolerance {args.tolerance_mib:g} MiB)"
            + ("" if ok else f", {len(failures)} failures") + ")")
    return ok, figures, line


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    ok, figures, line = run(args)
    for failure in figures.get("failures", [])[:25]:
        print(f"soak: FAILED: {failure}", flush=True)
    print("soak figures: " + json.dumps(figures, sort_keys=True), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2, sort_keys=True)
    print(f"GPU SOAK: {line}", flush=True)
    if "error" in figures and line.startswith("not run"):
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
