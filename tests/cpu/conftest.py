import os
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

import vramobs
from fake_cuda import child, fake_driver  # noqa: F401  (fixtures: the CUDA backend over a fake)
from vramobs import stats

# The operations the metrics document, in the C table's order (VRAM_OP_MAP).
OPS = (
    "malloc",
    "free",
    "memcpy_h2d",
    "memcpy_d2h",
    "get_info",
    "wipe",
    "memcpy_d2d",
    "memcpy_p2p",
    "memcpy_staged",
    "migrate",
    "host_alloc",
    "host_free",
    "pool_trim",
)

# Host-backend settings read by the library on first use; cleared so that this process runs
# with the documented defaults (1 device, 8 GiB) whatever the calling shell exports.
_HOST_ENV = ("VRAMOBS_HOST_DEVICES", "VRAMOBS_HOST_CAPACITY")


@pytest.fixture(scope="session", autouse=True)
def host_backend():
    for name in _HOST_ENV:
        os.environ.pop(name, None)
    vramobs.use_backend("host")
    assert vramobs.backend() == "host"


@pytest.fixture(autouse=True)
def no_leaks(host_backend):
    before = stats.registry_stats().live_count
    yield
    after = stats.registry_stats().live_count
    assert after == before, f"test left {after - before} live allocation(s) behind"


@pytest.fixture
def rng():
    seed = int.from_bytes(os.urandom(8), "little")
    print(f"numpy rng seed: {seed}")
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class OpDelta:
    calls: int
    by_status: Counter
    refused: Counter
    bytes_ok: int
    latency_ok: int
    latency_error: int
    latency_ok_sum: float
    size_ok: tuple
    bandwidth_ok: int


def _delta(after, before):
    return OpDelta(
        calls=after.calls - before.calls,
        by_status=Counter(after.by_status) - Counter(before.by_status),
        refused=Counter(after.refused) - Counter(before.refused),
        bytes_ok=after.bytes_ok - before.bytes_ok,
        latency_ok=after.latency_ok.count - before.latency_ok.count,
        latency_error=after.latency_error.count - before.latency_error.count,
        latency_ok_sum=after.latency_ok.total - before.latency_ok.total,
        size_ok=tuple(a - b for a, b in zip(after.size_ok.counts, before.size_ok.counts)),
        bandwidth_ok=after.bandwidth_ok.count - before.bandwidth_ok.count,
    )


class OpWatch:
    """Per-operation counter deltas since creation (or the last reset), from op_stats()."""

    def __init__(self, device=-1):
        self._device = device
        self.reset()

    def reset(self):
        self._before = stats.op_stats(self._device)

    def __call__(self, op):
        return _delta(stats.op_stats(self._device)[op], self._before[op])


@pytest.fixture
def op_watch():
    return OpWatch


# VRAMOBS_LIBRARY, an explicit choice of libvram_ops (a development build), is kept.
_VRAMOBS_ENV = ("VRAMOBS_BACKEND", "VRAMOBS_CUDA_DRIVER", "VRAMOBS_HOST_PEER") + _HOST_ENV


@pytest.fixture
def run_command(tmp_path):
    """Run a command in a temporary directory (so the source tree cannot shadow the installed
    package) whose only VRAMOBS_* settings are ``env``."""

    def run(argv, env=None):
        child_env = {k: v for k, v in os.environ.items() if k not in _VRAMOBS_ENV}
        child_env.update(env or {})
        return subprocess.run(
            argv, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=60
        )

    return run


@pytest.fixture
def run_python(run_command):
    """Run a Python snippet in a fresh interpreter, as run_command does."""

    def run(code, env=None):
        return run_command([sys.executable, "-c", textwrap.dedent(code)], env)

    return run
