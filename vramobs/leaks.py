"""Leak tracking: where each live buffer was allocated, and buffers never closed.

Every buffer remembers the code that allocated it (the calling frame, or a stack of
``track_stacks(depth)`` frames). A buffer garbage-collected while open is freed, counted
(``vramobs_leaked_buffers_total``) and reported with a ResourceWarning naming that code, as
Python does for an unclosed file. :func:`leak_report` lists the largest and oldest live
allocations with their stacks; :func:`leak_check` fails a block of code that leaves
allocations behind.
"""

from __future__ import annotations

import dis
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType
from typing import Optional, Union

from . import stats

__all__ = ["LeakError", "LeakReport", "track_stacks", "leak_report", "leak_check", "counts"]

# alloc(), to_device(), empty_batch(), alloc_async()
_API_FILES = {
    os.path.join(os.path.dirname(__file__), name) for name in ("buffer.py", "pool.py", "streams.py")
}
_depth = 1
_lock = threading.Lock()
# generation -> where it was made: each frame's code and instruction offset (f_lasti), in a
# flat tuple, innermost first. Recording them costs a fraction of formatting a line number;
# where() formats them, for the rare allocation anyone asks about. buffer.alloc() records the
# common case (one frame) itself.
_sites: dict[int, tuple[Union[CodeType, int], ...]] = {}
_leaked: dict[int, tuple[int, int]] = {}  # device -> (buffers, bytes)


def track_stacks(depth: int) -> None:
    """Remember ``depth`` frames of the allocating stack (1, the default: the caller only)."""
    global _depth
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    _depth = depth


def remember(generation: int) -> None:
    """Record where the allocation of this generation is being made (called by alloc)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in _API_FILES:
        frame = frame.f_back  # report the caller of alloc(), not vramobs' own frames
    site: list[Union[CodeType, int]] = []
    while frame is not None and len(site) < 2 * _depth:
        site += (frame.f_code, frame.f_lasti)
        frame = frame.f_back
    _sites[generation] = tuple(site)


def forget(generation: int) -> None:
    _sites.pop(generation, None)


def moved(old_generation: int, new_generation: int) -> None:
    """A migrated allocation keeps the site of the code that made the original."""
    site = _sites.pop(old_generation, None)
    if site is not None:
        _sites[new_generation] = site


def _line(code: CodeType, offset: int) -> Optional[int]:
    """The source line of the instruction at offset, as a frame's f_lineno gives it."""
    lines = getattr(code, "co_lines", None)
    if lines is not None:  # Python 3.10+
        for start, end, line in lines():
            if start <= offset < end:
                return line
        return None
    line = None
    for start, line_start in dis.findlinestarts(code):
        if start > offset:
            break
        line = line_start
    return line


def where(generation: int) -> str:
    """Where an allocation was made, innermost frame first, one line per frame."""
    site = _sites.get(generation)
    if not site:
        return "unknown"
    return "; ".join(
        f"{code.co_filename}:{_line(code, offset)} in {code.co_name}"  # type: ignore[union-attr]
        for code, offset in zip(site[::2], site[1::2])
    )


def collected(generation: int, device: int, nbytes: int) -> str:
    """Count a buffer garbage-collected while open; returns where it was allocated."""
    with _lock:
        buffers, total = _leaked.get(device, (0, 0))
        _leaked[device] = (buffers + 1, total + nbytes)
    site = where(generation)
    forget(generation)
    return site


def counts() -> dict[int, tuple[int, int]]:
    """Leaked (garbage-collected while open) buffers and bytes, per device."""
    with _lock:
        return dict(_leaked)


@dataclass(frozen=True)
class LiveBuffer:
    nbytes: int
    age_seconds: float
    device: int
    tag: str
    generation: int
    allocated_at: str


@dataclass(frozen=True)
class LeakReport:
    """The largest and the oldest live allocations, with where each was made."""

    live_count: int
    live_bytes: int
    largest: list[LiveBuffer]
    oldest: list[LiveBuffer]

    def __str__(self) -> str:
        lines = [f"{self.live_count} live allocations, {self.live_bytes} bytes"]
        for title, rows in (("largest", self.largest), ("oldest", self.oldest)):
            lines.append(f"{title}:")
            lines += [
                f"  {b.nbytes} bytes, {b.age_seconds:.1f} s old, device {b.device}, "
                f"tag {b.tag}: {b.allocated_at}"
                for b in rows
            ]
        return "\n".join(lines)


def _live(device: int = -1, tag: Optional[str] = None) -> list[LiveBuffer]:
    return [
        LiveBuffer(a.nbytes, a.age_seconds, a.device, a.tag, a.generation, where(a.generation))
        for a in stats.live_allocations(device)
        if tag is None or a.tag == tag
    ]


def leak_report(limit: int = 10, device: int = -1, tag: Optional[str] = None) -> LeakReport:
    """The ``limit`` largest and ``limit`` oldest live allocations (of one owner ``tag``, if
    given), with where they were made."""
    live = _live(device, tag)
    return LeakReport(
        live_count=len(live),
        live_bytes=sum(b.nbytes for b in live),
        largest=sorted(live, key=lambda b: b.nbytes, reverse=True)[:limit],
        oldest=live[:limit],  # the registry lists oldest first
    )


class LeakError(AssertionError):
    """A block of code left device allocations behind."""

    def __init__(self, leaked: list[LiveBuffer]) -> None:
        self.leaked = leaked
        detail = "\n".join(
            f"  {b.nbytes} bytes on device {b.device}, tag {b.tag}: {b.allocated_at}" for b in leaked
        )
        super().__init__(f"{len(leaked)} allocations left live:\n{detail}")


@contextmanager
def leak_check(device: int = -1) -> Iterator[None]:
    """Fail with LeakError if the block leaves allocations it made live."""
    before = {b.generation for b in _live(device)}
    yield
    leaked = [b for b in _live(device) if b.generation not in before]
    if leaked:
        raise LeakError(leaked)
