#!/usr/bin/env python3
"""The fault-injection matrix: every public call that reaches the driver x every kind of driver
fault, on the real CUDA backend over tests/fakecuda, as a markdown table of what happened.

    python tests/cpu/fault_matrix.py [--fake libfakecuda.so] [--readme README.md]

Each cell runs in a fresh interpreter (a latched device stays latched for the life of a
process): two live allocations, then one fault injected into the driver function the call
uses, then the call, then what it left behind: the code returned, the registry, device memory
the driver holds that the registry does not know of, the counters that moved, the device's
state, what ``/healthz`` answers (``vramobs.exporter.health``), and whether the next
operations work. Without ``--fake`` the fake driver is built first (tests/fakecuda/build.sh).
``--readme`` replaces the table between ``<!-- fault-matrix:begin -->`` and
``<!-- fault-matrix:end -->`` in that file; tests/cpu/test_fault_matrix_table.py checks that
the README's table is the one this script generates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from fake_cuda import PRELUDE  # noqa: E402  (the children's helpers: inject, calls, live, ...)

BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"

# The calls: (row label, the driver function its fault goes into). A new operation that reaches
# the driver is one more row here and one more branch in CALL below.
CALLS = (
    ("vram_malloc", "cuMemAlloc"),
    ("vram_free", "cuMemFree"),
    ("vram_free, wipe on", "cuMemsetD8"),
    ("vram_memcpy_h2d", "cuMemcpyHtoD"),
    ("vram_memcpy_d2h", "cuMemcpyDtoH"),
    ("vram_memcpy_d2d", "cuMemcpyDtoD"),
    ("vram_get_info", "cuMemGetInfo"),
    ("vram_memcpy_h2d_async", "cuMemcpyHtoDAsync"),
    ("vram_memcpy_d2h_async, then wait", "cuEventSynchronize"),
    ("vram_malloc_async", "cuMemAllocAsync"),
    ("vram_free_async", "cuMemFreeAsync"),
)

# The faults: (label, CUresult, sticky). Sticky: every later driver call fails too, as after a
# real illegal address; a GPU fallen off the bus answers CUDA_ERROR_UNKNOWN to everything.
FAULTS = (
    ("out of memory (2)", 2, False),
    ("invalid value (1)", 1, False),
    ("no device (100)", 100, False),
    ("illegal address (700), sticky", 700, True),
    ("device lost (999), sticky", 999, True),
)

CALL = r"""
LABEL, FN = os.environ["CASE_CALL"], os.environ["CASE_FN"]
ERR, STICKY = int(os.environ["CASE_ERR"]), os.environ["CASE_STICKY"] == "1"
from vramobs import _native, exporter

lib = _native.lib()
rnd = random.Random(SEED)
OPS = ("malloc", "free", "wipe", "memcpy_h2d", "memcpy_d2h", "memcpy_d2d", "get_info")
P, OFF, N = 1531, 7, 1001
start = live()
vramobs.set_wipe_on_free(LABEL.endswith("wipe on"))
p_generation = ctypes.c_uint64()
if LABEL == "vram_free_async":  # a stream-ordered allocation, freed in stream order
    p_ptr = ctypes.c_void_p()
    status_p = lib.vram_malloc_async(ctypes.byref(p_ptr), P, 0, ctypes.byref(p_generation), 0)
    p = p_ptr.value
else:
    status_p, p = raw.malloc(P)
status_q, q = raw.malloc(P)
check("setup mallocs", (status_p, status_q), (0, 0))
vramobs.set_wipe_on_free(False)
p_data, q_data = randbytes(rnd, P), randbytes(rnd, P)
for address, data in ((p, p_data), (q, q_data)):
    buf, addr = host(data)
    check("setup copy", raw.memcpy_h2d(address, addr, P), 0)
new, new_addr = host(randbytes(rnd, N))
sentinel = randbytes(rnd, N)
dst, dst_addr = host(sentinel)
if "async" in LABEL:  # async copies run on streams from and to page-locked memory
    pinned_new, pinned_dst = ctypes.c_void_p(), ctypes.c_void_p()
    check("setup host_alloc", (lib.vram_host_alloc(ctypes.byref(pinned_new), N),
                               lib.vram_host_alloc(ctypes.byref(pinned_dst), N)), (0, 0))
    ctypes.memmove(pinned_new.value, new.raw, N)
    ctypes.memmove(pinned_dst.value, sentinel, N)
    new_addr, dst_addr, dst = pinned_new.value, pinned_dst.value, None


def on_stream(copy, a, b, n):  # an async copy on the default stream, waited for
    completion = ctypes.c_void_p()
    status = copy(a, b, n, 0, ctypes.byref(completion))
    return status or lib.vram_completion_release(completion)


def counters():
    snap = stats.op_stats()
    return {op: dict(snap[op].by_status) for op in OPS if op in snap}

ops0, reg0, fake0, driver0 = counters(), stats.registry_stats(), live(), calls(FN)
inject(FN, ERR, 1, STICKY)
if LABEL == "vram_malloc":
    status, _ = raw.malloc(2049)
elif LABEL.startswith("vram_free,") or LABEL == "vram_free":
    status = raw.free(p)
elif LABEL == "vram_memcpy_h2d":
    status = raw.memcpy_h2d(p + OFF, new_addr, N)
elif LABEL == "vram_memcpy_d2h":
    status = raw.memcpy_d2h(dst_addr, p + OFF, N)
elif LABEL == "vram_memcpy_d2d":
    status = lib.vram_memcpy_d2d(q + OFF, p + OFF, N)
elif LABEL == "vram_memcpy_h2d_async":
    status = on_stream(lib.vram_memcpy_h2d_async, p + OFF, new_addr, N)
elif LABEL.startswith("vram_memcpy_d2h_async"):
    status = on_stream(lib.vram_memcpy_d2h_async, dst_addr, p + OFF, N)
elif LABEL == "vram_malloc_async":
    status = lib.vram_malloc_async(ctypes.byref(ctypes.c_void_p()), 2049, 0, None, 0)
elif LABEL == "vram_free_async":
    status = lib.vram_free_async(p, p_generation.value, 0)
else:
    status, _, _ = raw.get_info()
reached = calls(FN) > driver0
driver_error = None
if status:
    try:
        errors.raise_for(status)
    except vramobs.VramError as exc:
        driver_error = exc.driver_error_name

reg1, fake1 = stats.registry_stats(), live()
moved = {op: delta(after, ops0.get(op, {})) for op, after in counters().items()}
moved = {op: d for op, d in moved.items() if d}
if (reg1.lost_total - reg0.lost_total, reg0.live_count - reg1.live_count) == (1, 1):
    registry = "entry dropped as lost"
elif reg1.frees_total - reg0.frees_total == 1:
    registry = "entry freed"
elif (reg1.live_count, reg1.allocs_total, reg1.frees_total) == (reg0.live_count, reg0.allocs_total, reg0.frees_total):
    registry = "unchanged"
else:
    registry = f"live {reg0.live_count} -> {reg1.live_count}"
written = []  # p's fake memory is readable unless the call freed it
if registry != "entry freed" and ctypes.string_at(p, P) != p_data:
    written.append("p")
if ctypes.string_at(q, P) != q_data:
    written.append("q")
if (ctypes.string_at(dst_addr, N) if dst is None else dst.raw) != sentinel:
    written.append("host buffer")
orphans = (fake1 - fake0) - (reg1.live_count - reg0.live_count)
state = vramobs.device_state(0).name.lower()
healthy, _ = exporter.health()

# The next operations, with the fault gone from the driver unless it is sticky.
before = calls("*")
s_alloc, r = raw.malloc(64)
s_copy = raw.memcpy_h2d(q, new_addr, 64)
s_free = raw.free(r) if r else None
s_info = raw.get_info()[0]
after = calls("*")
statuses = sorted({s for s in (s_alloc, s_copy, s_free, s_info) if s is not None})
if statuses == [0]:
    following = "work"
else:
    following = "answer " + "/".join(str(s) for s in statuses) + (
        ", no driver call" if after == before else ", driver called")
# Free what is left; on a latched device the registry drops it as lost.
for address in (p, q):
    raw.free(address)
reg2 = stats.registry_stats()
left = live() - start - reg2.live_count
finish(status=status, driver_error=driver_error, reached=reached, registry=registry,
       written=written, orphans=orphans, left=left, moved=moved, state=state,
       healthy=healthy, following=following, registry_live_end=reg2.live_count)
"""


def build_fake(out: Path) -> Path:
    """Build the fake driver into out with tests/fakecuda/build.sh; return the library."""
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["sh", str(REPO / "tests" / "fakecuda" / "build.sh"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    library = out / "libfakecuda.so"
    if proc.returncode != 0 or not library.is_file():
        raise RuntimeError(f"cannot build the fake driver:\n{proc.stdout}\n{proc.stderr}")
    return library


def run_cell(fake: Path, call: tuple, fault: tuple, cwd: str) -> dict:
    """One cell, in a fresh interpreter on the CUDA backend over the fake driver."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VRAMOBS_", "FAKECUDA_")) or k == "VRAMOBS_LIBRARY"}
    env.update(VRAMOBS_BACKEND="cuda", VRAMOBS_CUDA_DRIVER=str(fake),
               CHILD_SEED=str(int.from_bytes(os.urandom(7), "little")), PYTHONDONTWRITEBYTECODE="1",
               CASE_CALL=call[0], CASE_FN=call[1], CASE_ERR=str(fault[1]),
               CASE_STICKY=str(int(fault[2])))
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(CALL)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(lines) != 1:
        raise RuntimeError(f"cell {call[0]} x {fault[0]} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[0][len("RESULT "):])
    result.update(call=call[0], function=call[1], fault=fault[0], error=fault[1], sticky=fault[2])
    return result


def run_matrix(fake: Path, jobs: int = 4) -> list[dict]:
    """Every cell, in CALLS x FAULTS order."""
    cells = [(call, fault) for call in CALLS for fault in FAULTS]
    with tempfile.TemporaryDirectory() as cwd, ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda cell: run_cell(fake, cell[0], cell[1], cwd), cells))


def _counted(moved: dict) -> str:
    parts = []
    for op, statuses in sorted(moved.items()):
        for status, n in sorted(statuses.items()):
            parts.append(f"{op} {status.removeprefix('VRAM_ERR_').removeprefix('VRAM_')} +{n}")
    return ", ".join(parts) or "nothing"


def _status(result: dict) -> str:
    names = {0: "SUCCESS", 1: "ALLOCATION_FAILED", 3: "COPY_FAILED", 4: "NO_DEVICE",
             8: "DEVICE_FAILED", 9: "DRIVER"}
    return f"{result['status']} {names.get(result['status'], '?')}"


def markdown(results: list[dict]) -> str:
    """The matrix as a markdown table, one row per cell."""
    rows = [
        "| call (driver function) | fault | returns | registry | bytes written | counted | "
        "device | /healthz | next calls | left after freeing all |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    merged: list[tuple[str, list[str], str]] = []  # faults of one call with one outcome share a row
    for r in results:
        left = "nothing" if r["left"] == 0 else (
            f"{r['left']} in the dead context" if r["state"] == "failed" else f"{r['left']} leaked")
        outcome = (f"{_status(r)} | {r['registry']} | {', '.join(r['written']) or 'none'} | "
                   f"{_counted(r['moved'])} | {r['state']} | {200 if r['healthy'] else 503} | "
                   f"{r['following']} | {left}")
        call = f"`{r['call']}` ({r['function']})"
        if merged and merged[-1][0] == call and merged[-1][2] == outcome:
            merged[-1][1].append(r["fault"])
        else:
            merged.append((call, [r["fault"]], outcome))
    rows += [f"| {call} | {'; '.join(faults)} | {outcome} |" for call, faults, outcome in merged]
    return "\n".join(rows) + "\n"


def replace_in(path: Path, table: str) -> bool:
    """Put table between the markers in path; False when the markers are missing."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    return True


def table_in(path: Path) -> Optional[str]:
    """The table between the markers in path, or None."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", type=Path, help="libfakecuda.so (default: build one)")
    parser.add_argument("--readme", type=Path, help="replace the table between the markers there")
    parser.add_argument("--jobs", type=int, default=4, help="cells run at once (default 4)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fake = args.fake or build_fake(Path(tmp))
        table = markdown(run_matrix(fake, args.jobs))
    if args.readme:
        if not replace_in(args.readme, table):
            print(f"{args.readme}: no {BEGIN} ... {END} markers", file=sys.stderr)
            return 1
        print(f"fault matrix: {len(CALLS)} calls x {len(FAULTS)} faults written to {args.readme}")
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
