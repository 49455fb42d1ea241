"""GPU suite: real VRAM through the CUDA backend. Run by tests/gpu/run.sh on a GPU machine.

Where no GPU answers, every test is skipped, unless VRAMOBS_REQUIRE_GPU=1 (set by run.sh):
then the suite fails, because a GPU suite that only ever skipped proves nothing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import vramobs
from vramobs import stats


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session", autouse=True)
def cuda_device() -> vramobs.DeviceInfo:
    vramobs.use_backend("cuda")
    try:
        vramobs.device_count()
    except vramobs.NoDeviceError as exc:
        if os.environ.get("VRAMOBS_REQUIRE_GPU") == "1":
            pytest.fail(f"VRAMOBS_REQUIRE_GPU=1 but no GPU: {exc}")
        pytest.skip(f"no GPU: {exc}")
    return vramobs.device_info(0)


@pytest.fixture(autouse=True)
def no_leaks() -> None:
    before = stats.registry_stats().live_count
    yield
    assert stats.registry_stats().live_count == before, "the test left allocations live"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


@pytest.fixture
def random_bytes(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Fresh random bytes of a given length, as a numpy array: never zeros."""
    return lambda n: rng.integers(0, 256, n, dtype=np.uint8)
