"""vramobs against raw CUDA (cuda-python), PyTorch and CuPy over sizes, in one run.

Every figure is a median of repeated timed calls, measured in the same process, so ratios
compare like with like. Peers that are not installed are reported as ``n/a``. Copies use
ordinary (pageable) numpy host memory filled with random bytes; each copy is verified once.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import alloc, raw

__all__ = ["Result", "run", "markdown"]

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
COPY_SIZES = (4 * KIB, 1 * MIB, 64 * MIB, 256 * MIB, 1 * GIB)
ALLOC_SIZES = (4 * KIB, 1 * MIB, 64 * MIB)


@dataclass(frozen=True)
class Result:
    case: str  # "h2d", "d2h", "alloc+free"
    nbytes: int
    peer: str
    seconds: float  # median per call

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9


def _median(fn: Callable[[], None], budget_s: float = 0.4, min_runs: int = 5) -> float:
    fn()  # warm-up: contexts, caches, first-touch
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_runs or (time.perf_counter() < deadline and len(samples) < 20000):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class _Peers:
    """Optional peers, each a dict of callables per case; absent libraries are skipped."""

    def __init__(self) -> None:
        self.torch = self._import("torch")
        self.cupy = self._import("cupy")
        try:
            from cuda.bindings import runtime as cudart

            self.cudart = cudart
        except ImportError:
            self.cudart = None

    @staticmethod
    def _import(name: str):  # type: ignore[no-untyped-def]
        try:
            return __import__(name)
        except ImportError:
            return None

    def _cuda(self, result):  # type: ignore[no-untyped-def]
        err, *rest = result
        if int(err) != 0:
            raise RuntimeError(f"cuda-python call failed: {err}")
        return rest[0] if rest else None

    def alloc_free(self, n: int) -> dict[str, Callable[[], None]]:
        cases: dict[str, Callable[[], None]] = {
            "vramobs": lambda: alloc(n).close(),
            "vramobs.raw": lambda: raw.free(raw.malloc(n)[1]),
        }
        if self.cudart:
            rt = self.cudart
            cases["cuda-python"] = lambda: self._cuda(rt.cudaFree(self._cuda(rt.cudaMalloc(n))))
        if self.torch:
            torch = self.torch
            cases["torch"] = lambda: torch.empty(n, dtype=torch.uint8, device="cuda")
        if self.cupy:
            cupy = self.cupy
            cases["cupy"] = lambda: cupy.empty(n, dtype=cupy.uint8)
        return cases

    def copies(self, n: int, host: np.ndarray, back: np.ndarray):  # type: ignore[no-untyped-def]
        """(h2d, d2h, cleanup) dicts of callables per peer, each verified once."""
        h2d: dict[str, Callable[[], None]] = {}
        d2h: dict[str, Callable[[], None]] = {}
        cleanup: list[Callable[[], None]] = []
        buf = alloc(n, tag="bench")
        cleanup.append(buf.close)
        h2d["vramobs"] = lambda: buf.copy_from(host)
        d2h["vramobs"] = lambda: buf.copy_to(back)
        if self.cudart:
            rt = self.cudart
            dptr = self._cuda(rt.cudaMalloc(n))
            cleanup.append(lambda: rt.cudaFree(dptr))
            kind_h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            kind_d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            h2d["cuda-python"] = lambda: self._cuda(rt.cudaMemcpy(dptr, host.ctypes.data, n, kind_h2d))
            d2h["cuda-python"] = lambda: self._cuda(rt.cudaMemcpy(back.ctypes.data, dptr, n, kind_d2h))
        if self.torch:
            torch = self.torch
            t_host, t_back = torch.from_numpy(host), torch.from_numpy(back)
            t_dev = torch.empty(n, dtype=torch.uint8, device="cuda")

            def torch_h2d() -> None:
                t_dev.copy_(t_host)
                torch.cuda.synchronize()

            h2d["torch"] = torch_h2d
            d2h["torch"] = lambda: t_back.copy_(t_dev)
        if self.cupy:
            cupy = self.cupy
            c_dev = cupy.empty(n, dtype=cupy.uint8)
            h2d["cupy"] = lambda: c_dev.set(host)
            d2h["cupy"] = lambda: c_dev.get(out=back)
        return h2d, d2h, cleanup


def run(copy_sizes=COPY_SIZES, alloc_sizes=ALLOC_SIZES, budget_s: float = 0.4) -> list[Result]:  # type: ignore[no-untyped-def]
    """Time every case for vramobs and each installed peer."""
    peers = _Peers()
    rng = np.random.default_rng()
    results: list[Result] = []
    for n in alloc_sizes:
        for peer, fn in peers.alloc_free(n).items():
            results.append(Result("alloc+free", n, peer, _median(fn, budget_s)))
    for n in copy_sizes:
        host = rng.integers(0, 256, n, dtype=np.uint8)
        back = np.empty_like(host)
        h2d, d2h, cleanup = peers.copies(n, host, back)
        try:
            for peer in h2d:
                back[:] = rng.integers(0, 256, n, dtype=np.uint8)  # stale bytes must not pass
                h2d[peer]()
                d2h[peer]()
                if not np.array_equal(host, back):
                    raise AssertionError(f"{peer} round trip of {n} bytes corrupted data")
                results.append(Result("h2d", n, peer, _median(h2d[peer], budget_s)))
                results.append(Result("d2h", n, peer, _median(d2h[peer], budget_s)))
        finally:
            for fn in reversed(cleanup):
                fn()
    return results


def overhead(budget_s: float = 0.4) -> list[tuple[str, float, float]]:
    """(what, bare ctypes call seconds, vramobs API seconds) with spans off: what the Python
    layer (argument checks, buffer objects, leak sites) adds to the binding call."""
    import ctypes

    from .. import _native, get_info, tracing

    lib = _native.lib()
    tracing.configure(enabled=False)
    n = 4096
    host = np.random.default_rng().integers(0, 256, n, dtype=np.uint8)
    address = host.ctypes.data
    ptr, free_b, total_b = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_size_t()
    rows = []
    with alloc(n) as buf:
        dev = buf.ptr
        rows.append(("copy_from 4 KiB", _median(lambda: lib.vram_memcpy_h2d(dev, address, n), budget_s),
                     _median(lambda: buf.copy_from(host), budget_s)))
        rows.append(("copy_to 4 KiB", _median(lambda: lib.vram_memcpy_d2h(address, dev, n), budget_s),
                     _median(lambda: buf.copy_to(host), budget_s)))

    def bare_pair() -> None:
        lib.vram_malloc(ctypes.byref(ptr), n)
        lib.vram_free(ptr)

    rows.append(("alloc+close 4 KiB", _median(bare_pair, budget_s), _median(lambda: alloc(n).close(), budget_s)))
    rows.append(("get_info", _median(lambda: lib.vram_get_info(ctypes.byref(free_b), ctypes.byref(total_b)), budget_s),
                 _median(get_info, budget_s)))
    tracing.configure(enabled=True)
    return rows


def scrape_seconds(live: int = 100_000) -> float:
    """Median time to render /metrics with ``live`` allocations live."""
    from prometheus_client import generate_latest

    from ..exporter import default_registry

    addresses = []
    try:
        for _ in range(live):
            status, address = raw.malloc(256)
            if status != 0:
                raise RuntimeError(f"allocation {len(addresses)} failed with status {status}")
            addresses.append(address)
        registry = default_registry()
        return _median(lambda: generate_latest(registry), budget_s=1.0)
    finally:
        for address in addresses:
            raw.free(address)


def _size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n // scale} {unit}"
    return f"{n} B"


def markdown(results: list[Result], baseline: str = "cuda-python") -> str:
    """A table per case: copies in GB/s, allocation in microseconds, and vramobs / baseline."""
    peers = sorted({r.peer for r in results}, key=lambda p: (p != "vramobs", p))
    by_key = {(r.case, r.nbytes, r.peer): r for r in results}
    lines = []
    for case in ("h2d", "d2h", "alloc+free"):
        sizes = sorted({r.nbytes for r in results if r.case == case})
        if not sizes:
            continue
        unit = "us per pair" if case == "alloc+free" else "GB/s"
        lines += [
            f"\n{case} ({unit}, median; ratio = vramobs / {baseline}, "
            f"{'lower' if case == 'alloc+free' else 'higher'} is better)",
            "| size | " + " | ".join(peers) + " | ratio |",
            "|---" * (len(peers) + 2) + "|",
        ]
        for n in sizes:
            cells = []
            for peer in peers:
                r = by_key.get((case, n, peer))
                cells.append("n/a" if r is None else _cell(r))
            ratio = _ratio(by_key.get((case, n, "vramobs")), by_key.get((case, n, baseline)))
            lines.append(f"| {_size(n)} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def _cell(r: Result) -> str:
    return f"{r.seconds * 1e6:.2f}" if r.case == "alloc+free" else f"{r.gbps:.2f}"


def _ratio(ours: Optional[Result], theirs: Optional[Result]) -> str:
    if ours is None or theirs is None:
        return "n/a"
    if ours.case == "alloc+free":
        return f"{ours.seconds / theirs.seconds:.2f}"
    return f"{ours.gbps / theirs.gbps:.2f}"
