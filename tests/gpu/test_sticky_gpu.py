"""A real sticky error (an illegal address from a kernel) latches the device as failed; an
out-of-memory does not. Runs in a child process: a sticky error kills the CUDA context."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import cupy, vramobs
    from vramobs import raw, stats
    vramobs.use_backend("cuda")
    buf = vramobs.alloc(1 << 20)
    kernel = cupy.RawKernel(
        'extern "C" __global__ void poke(int *p) { *(volatile int *)(p + (1ull << 40)) = 1; }',
        "poke")
    kernel((1,), (1,), (cupy.zeros(1, dtype=cupy.int32),))
    try:
        cupy.cuda.runtime.deviceSynchronize()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        print("kernel fault:", exc)
    status = raw.memcpy_h2d(buf.ptr, id(b"x" * 64), 64)
    print("first call after the fault:", status)
    assert status == 8, status
    assert vramobs.device_state(0) is vramobs.DeviceState.FAILED
    info = raw.get_info()
    assert info[0] == 8, info
    assert raw.malloc(4096) == (8, 0)
    try:
        buf.close()
    except vramobs.DeviceFailedError as exc:
        print("close:", exc)
    s = stats.registry_stats()
    assert s.live_count == 0 and s.lost_total == 1, s
    print("LATCHED OK")
    """
)


def test_sticky_error_latches_the_device() -> None:
    pytest.importorskip("cupy")
    env = dict(os.environ, VRAMOBS_BACKEND="cuda")
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, env=env,
        cwd=os.path.dirname(__file__) + "/..",
    )
    assert "LATCHED OK" in done.stdout, done.stdout + done.stderr
