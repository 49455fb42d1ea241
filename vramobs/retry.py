"""Retrying allocations that ran out of device memory.

Only out-of-memory is retried: it is the one failure that freeing memory can cure (a sticky
error never is). Before each retry the hooks the service registered run (drop a cache, shed
load), then the caller waits a jittered, exponentially growing delay, bounded in attempts and
in total time. No lock is held while hooks run or while waiting. Every retry and every
give-up is counted, per device, and exported
(``vramobs_allocation_retries_total``, ``vramobs_allocation_give_ups_total``).

Off by default: ``configure(attempts=3)`` turns it on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["RetryPolicy", "configure", "policy", "on_out_of_memory", "remove_hook", "counts"]

log = logging.getLogger(__name__)

OutOfMemoryHook = Callable[[int, int], None]  # (bytes asked for, device)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 1  # attempts in all, the first included: 1 never retries
    base_delay: float = 0.002  # seconds before the second attempt; doubles after each
    max_delay: float = 0.02
    max_total: float = 0.05  # no retry starts once this long has passed since the first

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("base_delay", "max_delay", "max_total"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


_policy = RetryPolicy()
_hooks: list[OutOfMemoryHook] = []
_lock = threading.Lock()
_counts: dict[int, tuple[int, int]] = {}  # device -> (retries, give-ups)


def configure(**fields: float) -> RetryPolicy:
    """Set the policy's fields (``attempts``, ``base_delay``, ``max_delay``, ``max_total``)."""
    global _policy
    values = {**_policy.__dict__, **fields}
    _policy = RetryPolicy(**values)  # type: ignore[arg-type]
    return _policy


def policy() -> RetryPolicy:
    return _policy


def on_out_of_memory(hook: OutOfMemoryHook) -> OutOfMemoryHook:
    """Register ``hook(nbytes, device)`` to run before each retry; usable as a decorator."""
    with _lock:
        _hooks.append(hook)
    return hook


def remove_hook(hook: OutOfMemoryHook) -> None:
    with _lock:
        _hooks.remove(hook)


def counts() -> dict[int, tuple[int, int]]:
    """Retries and give-ups per device."""
    with _lock:
        return dict(_counts)


def _count(device: int, retries: int, give_ups: int) -> None:
    with _lock:
        r, g = _counts.get(device, (0, 0))
        _counts[device] = (r + retries, g + give_ups)


def retry(allocate: Callable[[], int], out_of_memory: int, nbytes: int, device: int) -> int:
    """Run ``allocate`` (returning a status) again while it answers ``out_of_memory`` and the
    policy allows; returns the last status."""
    current = _policy
    status = out_of_memory
    start = time.monotonic()
    delay = current.base_delay
    for _ in range(current.attempts - 1):
        if time.monotonic() - start > current.max_total:
            break
        with _lock:
            hooks = list(_hooks)
        for hook in hooks:
            try:
                hook(nbytes, device)
            except Exception:  # a failing hook must not hide the allocation's outcome
                log.exception("out-of-memory hook %r failed", hook)
        time.sleep(random.uniform(0.5, 1.0) * min(delay, current.max_delay))
        delay *= 2
        _count(device, 1, 0)
        status = allocate()
        if status != out_of_memory:
            return status
    _count(device, 0, 1)
    return status
