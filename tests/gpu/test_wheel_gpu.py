"""The GPU suite runs the wheel built on the CPU machine, installed unchanged."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import vramobs
from vramobs import _native

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_wheel_not_the_source_tree_is_under_test() -> None:
    package = Path(vramobs.__file__).resolve().parent
    assert REPO not in package.parents, package
    _native.lib()
    assert _native.library_path() is not None
    assert Path(_native.library_path()).resolve().parent == package


def test_the_wheel_is_the_one_for_every_python_3() -> None:
    wheel = metadata.distribution("vramobs").read_text("WHEEL") or ""
    tags = [line.split(": ", 1)[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
    assert tags and all(tag.startswith("py3-none-") for tag in tags), tags
    assert _native.lib().vram_version_string().decode() == vramobs.__version__
