"""``vramobs bench``: vramobs timed against raw CUDA (cuda-python), PyTorch and CuPy in one run.

:mod:`.peers` times the operations over sizes from 4 KiB to 1 GiB; :mod:`.targets` measures
the performance targets (pageable copies against pinned ones, both directions at once, pinned
buffers, small copies, pooled allocation, copies between allocations) as ratios against the
peers measured in the same run.
"""

from .peers import Result, markdown, overhead, run, scrape_seconds
from .targets import Target, measure_targets, pageable_fixed_cost, staging_sweep, targets_markdown

__all__ = [
    "Result",
    "Target",
    "markdown",
    "measure_targets",
    "overhead",
    "pageable_fixed_cost",
    "run",
    "scrape_seconds",
    "staging_sweep",
    "targets_markdown",
]
