"""The pytest plugin vramobs installs: a ``vram_leak_check`` fixture.

A test that requests it fails (at teardown, with LeakError naming where each allocation was
made) if it leaves device allocations it made live.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .leaks import leak_check


@pytest.fixture
def vram_leak_check() -> Iterator[None]:
    """Fail the test if it leaves device allocations it made live."""
    with leak_check():
        yield
