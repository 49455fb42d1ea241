"""The fake CUDA driver (tests/fakecuda), built once per session, and a harness that runs code
in a fresh interpreter on the real CUDA backend over it: the `fake_driver` and `child`
fixtures, shared through conftest.py."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "fakecuda" / "build.sh"

# ---------------------------------------------------------------------------------------------
# The fake driver, built once per session.
# ---------------------------------------------------------------------------------------------


def _wheel_include_dir():
    """cuda.h of the nvidia-cuda-runtime wheel in this interpreter's environment, if any."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(base) / "cu13" / "include"
        if (candidate / "cuda.h").is_file():
            return candidate
    return None


def _toolkit_include_dir():
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in filter(None, roots):
        candidate = Path(root) / "include"
        if (candidate / "cuda.h").is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def fake_driver(tmp_path_factory):
    """Path of a freshly built libfakecuda.so."""
    out = tmp_path_factory.mktemp("fakecuda")
    env = dict(os.environ, PYTHON=sys.executable)
    if not env.get("VRAMOBS_CUDA_INCLUDE_DIR") and _wheel_include_dir() is None:
        toolkit = _toolkit_include_dir()
        if toolkit is not None:
            env["VRAMOBS_CUDA_INCLUDE_DIR"] = str(toolkit)
    proc = subprocess.run(
        ["sh", str(BUILD_SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    library = out / "libfakecuda.so"
    if proc.returncode != 0 or not library.is_file():
        pytest.fail(
            "cannot build the fake CUDA driver (tests/fakecuda/build.sh): install the test "
            "dependency nvidia-cuda-runtime==13.* or set VRAMOBS_CUDA_INCLUDE_DIR to a directory "
            f"holding cuda.h\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return library


# ---------------------------------------------------------------------------------------------
# Children.
# ---------------------------------------------------------------------------------------------

# Settings that would change what the child's libvram_ops or fake driver does.
_SCRUBBED_PREFIXES = ("VRAMOBS_", "FAKECUDA_")
# An explicit choice of libvram_ops stays, and the fake's deferred streams (tests/run.sh runs
# the fake-driver suites once more with FAKECUDA_ASYNC=deferred).
_KEPT = ("VRAMOBS_LIBRARY", "FAKECUDA_ASYNC")

PRELUDE = r'''
import ctypes, json, os, random, sys, threading, traceback
import vramobs
from vramobs import errors, raw, stats
from vramobs.device import DeviceState

SEED = int(os.environ["CHILD_SEED"])
GiB, MiB = 1 << 30, 1 << 20
MEM_FUNCTIONS = ("cuMemAlloc", "cuMemFree", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemGetInfo")

_fake = None


def fake():
    """The fake driver's control API: the copy libvram_ops loaded (same path, same handle)."""
    global _fake
    if _fake is None:
        lib = ctypes.CDLL(os.environ["VRAMOBS_CUDA_DRIVER"])
        lib.fakecuda_inject.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_long, ctypes.c_int]
        lib.fakecuda_inject.restype = None
        lib.fakecuda_reset.argtypes = []
        lib.fakecuda_reset.restype = None
        lib.fakecuda_calls.argtypes = [ctypes.c_char_p]
        lib.fakecuda_calls.restype = ctypes.c_long
        lib.fakecuda_live_allocations.argtypes = []
        lib.fakecuda_live_allocations.restype = ctypes.c_long
        lib.fakecuda_live_bytes.argtypes = []
        lib.fakecuda_live_bytes.restype = ctypes.c_ulonglong
        _fake = lib
    return _fake


def inject(function, error, nth=1, sticky=False):
    fake().fakecuda_inject(function.encode(), error, nth, int(sticky))


def calls(function="*"):
    return fake().fakecuda_calls(function.encode())


def call_counts():
    return {f: calls(f) for f in MEM_FUNCTIONS + ("*",)}


def live():
    return fake().fakecuda_live_allocations()


def live_bytes():
    return fake().fakecuda_live_bytes()


def current_context():
    """This thread's current context in the fake driver (a driver call: use after counting)."""
    fn = fake().cuCtxGetCurrent
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    fn.restype = ctypes.c_int
    ctx = ctypes.c_void_p()
    return fn(ctypes.byref(ctx)), ctx.value


def randbytes(rnd, n):
    """Fresh random bytes, never all zero."""
    while True:
        data = bytes(rnd.getrandbits(8) for _ in range(n)) if n < 64 else rnd.randbytes(n)
        if any(data):
            return data


def host(data):
    """A ctypes host buffer holding data, and its address."""
    buf = ctypes.create_string_buffer(data, len(data))
    return buf, ctypes.addressof(buf)


def round_up(n, a):
    return (n + a - 1) // a * a


def cuda_footprint(n):
    """The CUDA backend's model of what an allocation takes: 2 MiB pages above 1 MiB."""
    return round_up(n, 2 << 20) if n > 1 << 20 else round_up(n, 256)


def fake_free(total, reserved, sizes):
    """What the fake's cuMemGetInfo answers: total - reserved - sizes rounded to 512."""
    return max(total - reserved - sum(round_up(n, 512) for n in sizes), 0)


def by_status(op, device=-1):
    return dict(stats.op_stats(device)[op].by_status)


def refused(op, device=-1):
    return dict(stats.op_stats(device)[op].refused)


def delta(after, before):
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


MISMATCHES = []


def check(what, actual, expected):
    if actual != expected:
        MISMATCHES.append(f"{what}: expected {expected!r}, got {actual!r}")
    return actual == expected


def check_true(what, condition, detail=""):
    if not condition:
        MISMATCHES.append(f"{what}: {detail}" if detail else what)
    return bool(condition)


def raises(what, cls, fn, *args, **kwargs):
    """Call fn; record a mismatch unless it raises cls. Returns the exception or None."""
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B902 - anything else is a mismatch too
        if not isinstance(exc, cls):
            MISMATCHES.append(f"{what}: expected {cls.__name__}, got {type(exc).__name__}: {exc}")
        return exc
    MISMATCHES.append(f"{what}: expected {cls.__name__}, nothing was raised")
    return None


def no_driver_call(what, fn, *args, **kwargs):
    """Run fn and record a mismatch if any driver function was called meanwhile."""
    before = call_counts()
    try:
        return fn(*args, **kwargs)
    finally:
        after = call_counts()
        check(f"{what}: driver calls", delta(after, before), {})


def finish(**values):
    print("RESULT " + json.dumps(dict(values, mismatches=MISMATCHES)), flush=True)
'''


@pytest.fixture
def child(fake_driver, tmp_path):
    """Run code (after PRELUDE) in a fresh interpreter on the CUDA backend over the fake
    driver; return the values it passed to finish(), failing on any recorded mismatch."""

    def run(code, timeout=60, **env):
        seed = random.SystemRandom().getrandbits(63)
        child_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_SCRUBBED_PREFIXES) or k in _KEPT
        }
        child_env.update(
            VRAMOBS_BACKEND="cuda",
            VRAMOBS_CUDA_DRIVER=str(fake_driver),
            CHILD_SEED=str(seed),
            PYTHONDONTWRITEBYTECODE="1",
        )
        child_env.update({k: str(v) for k, v in env.items()})
        source = PRELUDE + textwrap.dedent(code)
        proc = subprocess.run(
            [sys.executable, "-c", source],
            cwd=tmp_path,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        settings = {k: v for k, v in child_env.items() if k.startswith(_SCRUBBED_PREFIXES)}
        detail = (
            f"\nchild seed {seed}, settings {settings}, exit status {proc.returncode}"
            f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
        assert proc.returncode == 0, "child failed" + detail
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, "child printed no RESULT line" + detail
        result = json.loads(lines[0][len("RESULT "):])
        mismatches = result.pop("mismatches")
        assert not mismatches, "\n".join(["mismatches in the child:", *mismatches]) + detail
        return result

    return run
