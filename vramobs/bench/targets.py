"""The performance targets, measured against peers timed in the same run.

Each target compares a vramobs figure with a reference measured moments before or after it in
the same process: pinned ``cudaMemcpy`` through cuda-python for copies, one direction alone for
both directions at once, ``torch.empty``/``cupy.empty`` for pooled allocation. A target that
needs a peer that is not installed is reported as not measured, never as met.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import alloc, copy_path, device_count
from .peers import GIB, KIB, MIB, _median, _Peers, _size

__all__ = ["Target", "measure_targets", "pageable_fixed_cost", "targets_markdown"]

PAGEABLE_SIZES = (64 * MIB, 256 * MIB, 1 * GIB)
PINNED_SIZES = (16 * MIB, 256 * MIB)


@dataclass(frozen=True)
class Target:
    what: str
    peers: str  # the references, as measured in this run
    vramobs: str
    value: Optional[float]  # the figure the target bounds (a ratio, or microseconds)
    target: str
    met: Optional[bool]  # None: not measured (a peer is missing)


def _gbps(n: int, seconds: float) -> float:
    return n / seconds / 1e9


class _Cuda:
    """Reference copies through cuda-python's runtime: pinned and pageable cudaMemcpy."""

    def __init__(self, peers: _Peers) -> None:
        self.rt = peers.cudart
        self._check = peers._cuda

    def malloc(self, n: int) -> int:
        return self._check(self.rt.cudaMalloc(n))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def pinned(self, n: int) -> tuple[int, np.ndarray]:
        ptr = self._check(self.rt.cudaMallocHost(n))
        import ctypes

        array = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))
        return ptr, array

    def free_pinned(self, ptr: int) -> None:
        self._check(self.rt.cudaFreeHost(ptr))

    def copy(self, dst: int, src: int, n: int, kind: str) -> Callable[[], None]:
        k = getattr(self.rt.cudaMemcpyKind, f"cudaMemcpy{kind}")
        return lambda: self._check(self.rt.cudaMemcpy(dst, src, n, k))

    def peer(self, dst: int, dst_dev: int, src: int, src_dev: int, n: int) -> Callable[[], None]:
        def run() -> None:
            self._check(self.rt.cudaMemcpyPeer(dst, dst_dev, src, src_dev, n))
            self._check(self.rt.cudaDeviceSynchronize())

        return run


def _pageable(cuda: _Cuda, rng: np.random.Generator, budget: float) -> list[Target]:
    rows = []
    for n in PAGEABLE_SIZES:
        host = rng.integers(0, 256, n, dtype=np.uint8)
        back = np.empty_like(host)
        dptr = cuda.malloc(n)
        pptr, pinned = cuda.pinned(n)
        try:
            with alloc(n, tag="bench") as buf:
                buf.copy_from(host)
                buf.copy_to(back)
                if not np.array_equal(host, back):
                    raise AssertionError(f"staged round trip of {n} bytes corrupted data")
                for direction, ours, pinned_ref, pageable_ref in (
                    ("h2d", lambda: buf.copy_from(host), cuda.copy(dptr, pptr, n, "HostToDevice"),
                     cuda.copy(dptr, host.ctypes.data, n, "HostToDevice")),
                    ("d2h", lambda: buf.copy_to(back), cuda.copy(pptr, dptr, n, "DeviceToHost"),
                     cuda.copy(back.ctypes.data, dptr, n, "DeviceToHost")),
                ):
                    ref = _gbps(n, _median(pinned_ref, budget))
                    plain = _gbps(n, _median(pageable_ref, budget))
                    mine = _gbps(n, _median(ours, budget))
                    ratio = mine / ref
                    bound = 0.85 if direction == "h2d" else 0.75
                    rows.append(Target(
                        f"{direction.upper()} pageable {_size(n)}",
                        f"pinned cudaMemcpy {ref:.1f} GB/s; pageable cudaMemcpy {plain:.1f} GB/s",
                        f"{mine:.1f} GB/s", ratio, f">= {bound} x pinned", ratio >= bound))
        finally:
            cuda.free_pinned(pptr)
            cuda.free(dptr)
    return rows


def _both_directions(rng: np.random.Generator, budget: float) -> Target:
    n = 256 * MIB
    host_in = rng.integers(0, 256, n, dtype=np.uint8)
    host_out = np.empty_like(host_in)
    with alloc(n, tag="bench") as a, alloc(n, tag="bench") as b:
        b.copy_from(host_in)
        alone = _gbps(n, _median(lambda: a.copy_from(host_in), budget))
        rounds = max(4, int(budget * alone * 1e9 / n))
        barrier = threading.Barrier(2)

        def loop(fn: Callable[[], None]) -> None:
            barrier.wait()
            for _ in range(rounds):
                fn()

        threads = [threading.Thread(target=loop, args=(lambda: a.copy_from(host_in),)),
                   threading.Thread(target=loop, args=(lambda: b.copy_to(host_out),))]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both = _gbps(2 * rounds * n, time.perf_counter() - start)
        if not np.array_equal(host_in, host_out):
            raise AssertionError("concurrent copies corrupted data")
    ratio = both / alone
    return Target("H2D + D2H at once, pageable 256 MiB", f"H2D alone {alone:.1f} GB/s",
                  f"{both:.1f} GB/s together", ratio, ">= 1.4 x one direction", ratio >= 1.4)


def _pinned_buffers(cuda: _Cuda, budget: float) -> list[Target]:
    from .. import pinned_empty

    rows = []
    for n in PINNED_SIZES:
        dptr = cuda.malloc(n)
        pptr, ref_host = cuda.pinned(n)
        try:
            with alloc(n, tag="bench") as buf, pinned_empty(n) as host:
                for direction, ours, ref in (
                    ("h2d", lambda: buf.copy_from(host), cuda.copy(dptr, pptr, n, "HostToDevice")),
                    ("d2h", lambda: buf.copy_to(host), cuda.copy(pptr, dptr, n, "DeviceToHost")),
                ):
                    theirs = _gbps(n, _median(ref, budget))
                    mine = _gbps(n, _median(ours, budget))
                    ratio = mine / theirs
                    rows.append(Target(
                        f"{direction.upper()} vramobs pinned buffer {_size(n)}",
                        f"pinned cudaMemcpy {theirs:.1f} GB/s", f"{mine:.1f} GB/s", ratio,
                        ">= 0.97 x pinned cudaMemcpy", ratio >= 0.97))
        finally:
            cuda.free_pinned(pptr)
            cuda.free(dptr)
    return rows


def _small_copy(cuda: _Cuda, rng: np.random.Generator, budget: float) -> Target:
    n = 4 * KIB
    host = rng.integers(0, 256, n, dtype=np.uint8)
    dptr = cuda.malloc(n)
    try:
        with alloc(n, tag="bench") as buf:
            theirs = _median(cuda.copy(dptr, host.ctypes.data, n, "HostToDevice"), budget)
            mine = _median(lambda: buf.copy_from(host), budget)
    finally:
        cuda.free(dptr)
    extra = (mine - theirs) * 1e6
    return Target("4 KiB H2D copy (from Python)", f"cudaMemcpy {theirs * 1e6:.2f} us",
                  f"{mine * 1e6:.2f} us", extra, "<= raw + 1 us", extra <= 1.0)


def _pooled_pair(peers: _Peers, budget: float) -> Target:
    from .. import disable_pool, enable_pool, tracing

    n = 4 * KIB
    refs = []
    if peers.torch:
        torch = peers.torch
        refs.append(("torch.empty", _median(lambda: torch.empty(n, dtype=torch.uint8, device="cuda"), budget)))
    if peers.cupy:
        cupy = peers.cupy
        refs.append(("cupy.empty", _median(lambda: cupy.empty(n, dtype=cupy.uint8), budget)))
    enable_pool(256 * MIB)
    tracing.configure(enabled=False)
    try:
        mine = _median(lambda: alloc(n).close(), budget)
    finally:
        tracing.configure(enabled=True)
        disable_pool()
    text = "; ".join(f"{name} {s * 1e6:.2f} us" for name, s in refs) or "n/a"
    return Target("pooled alloc+close 4 KiB from Python (metrics on, spans off)", text,
                  f"{mine * 1e6:.2f} us", mine * 1e6, "<= 2.0 us", mine * 1e6 <= 2.0)


def _stream_copies(cuda: _Cuda, budget: float) -> list[Target]:
    """Copies on caller streams between vramobs pinned buffers and device memory, waited for,
    against cudaMemcpyAsync + cudaStreamSynchronize on a stream of the same kind; and both
    directions on two streams at once against one direction alone."""
    from .. import pinned_empty

    rt, check = cuda.rt, cuda._check
    n = 256 * MIB
    streams = [check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)) for _ in range(2)]
    up, down = streams
    dptr = cuda.malloc(n)
    pptr, _ = cuda.pinned(n)
    kinds = rt.cudaMemcpyKind
    rows = []
    try:
        with alloc(n, tag="bench") as a, alloc(n, tag="bench") as b, \
                pinned_empty(n) as src, pinned_empty(n) as dst:
            def ref(dst_ptr: int, src_ptr: int, kind: object) -> Callable[[], None]:
                def run() -> None:
                    check(rt.cudaMemcpyAsync(dst_ptr, src_ptr, n, kind, up))
                    check(rt.cudaStreamSynchronize(up))
                return run

            alone = 0.0
            for direction, ours, theirs in (
                ("h2d", lambda: a.copy_from_async(src, stream=up).wait(),
                 ref(dptr, pptr, kinds.cudaMemcpyHostToDevice)),
                ("d2h", lambda: a.copy_to_async(dst, stream=up).wait(),
                 ref(pptr, dptr, kinds.cudaMemcpyDeviceToHost)),
            ):
                reference = _gbps(n, _median(theirs, budget))
                mine = _gbps(n, _median(ours, budget))
                alone = max(alone, mine)
                ratio = mine / reference
                rows.append(Target(
                    f"{direction.upper()} on a caller stream, pinned 256 MiB",
                    f"cudaMemcpyAsync + sync {reference:.1f} GB/s", f"{mine:.1f} GB/s", ratio,
                    ">= 0.97 x cudaMemcpyAsync", ratio >= 0.97))

            def both() -> None:
                first = a.copy_from_async(src, stream=up)
                second = b.copy_to_async(dst, stream=down)
                first.wait()
                second.wait()

            together = _gbps(2 * n, _median(both, budget))
            ratio = together / alone
            rows.append(Target("H2D + D2H on two caller streams, pinned 256 MiB",
                               f"faster direction alone {alone:.1f} GB/s",
                               f"{together:.1f} GB/s together", ratio,
                               ">= 1.4 x one direction", ratio >= 1.4))
    finally:
        cuda.free_pinned(pptr)
        cuda.free(dptr)
        for stream in streams:
            check(rt.cudaStreamDestroy(stream))
    return rows


def _device_copies(cuda: _Cuda, rng: np.random.Generator, budget: float) -> list[Target]:
    n = 256 * MIB
    rows = []
    pairs = [(0, 0)] + ([(0, 1), (1, 0)] if device_count() > 1 else [])
    data = rng.integers(0, 256, n, dtype=np.uint8)
    for src_dev, dst_dev in pairs:
        with alloc(n, device=src_dev) as src, alloc(n, device=dst_dev) as dst:
            src.copy_from(data)
            dst.copy_from(src)
            if dst.to_bytes(0, 4096) != data[:4096].tobytes():
                raise AssertionError("device copy corrupted data")
            mine = _gbps(n, _median(lambda: dst.copy_from(src), budget))
            if src_dev == dst_dev:
                ref = cuda.copy(dst.ptr, src.ptr, n, "DeviceToDevice")

                def synced() -> None:
                    ref()
                    cuda._check(cuda.rt.cudaDeviceSynchronize())

                theirs = _gbps(n, _median(synced, budget))
                name = "cudaMemcpy D2D"
            else:
                theirs = _gbps(n, _median(cuda.peer(dst.ptr, dst_dev, src.ptr, src_dev, n), budget))
                name = "cudaMemcpyPeer"
        path = copy_path(src_dev, dst_dev)
        ratio = mine / theirs
        rows.append(Target(f"device copy {src_dev} -> {dst_dev} ({path}) 256 MiB",
                           f"{name} {theirs:.1f} GB/s", f"{mine:.1f} GB/s", ratio,
                           ">= 0.97 x the driver's", ratio >= 0.97))
    return rows


def measure_targets(budget_s: float = 0.4) -> list[Target]:
    """Measure every target on the current CUDA device(s); needs cuda-python for references."""
    peers = _Peers()
    rng = np.random.default_rng()
    if peers.cudart is None:
        return [Target("all copy targets", "cuda-python not installed", "n/a", None, "-", None)]
    cuda = _Cuda(peers)
    rows = _pageable(cuda, rng, budget_s)
    rows.append(_both_directions(rng, budget_s))
    rows += _pinned_buffers(cuda, budget_s)
    rows += _stream_copies(cuda, budget_s)
    rows.append(_small_copy(cuda, rng, budget_s))
    rows.append(_pooled_pair(peers, budget_s))
    rows += _device_copies(cuda, rng, budget_s)
    return rows


def targets_markdown(rows: list[Target]) -> str:
    lines = ["| what | peers (same run) | vramobs | value | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        value = "n/a" if r.value is None else f"{r.value:.2f}"
        met = "not measured" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"| {r.what} | {r.peers} | {r.vramobs} | {value} | {r.target} | {met} |")
    return "\n".join(lines)


def staging_sweep(
    threads: tuple[int, ...] = (4, 8, 12, 16),
    chunks: tuple[int, ...] = (1 * MIB, 2 * MIB, 4 * MIB, 8 * MIB),
    nbytes: int = 256 * MIB,
    budget_s: float = 0.3,
) -> str:
    """Pageable H2D and D2H bandwidth for each staging configuration: the measurement the
    defaults are chosen from. The configuration in force before is restored."""
    from .. import configure_staging, staging_config

    before = staging_config()
    rng = np.random.default_rng()
    host = rng.integers(0, 256, nbytes, dtype=np.uint8)
    back = np.empty_like(host)
    lines = [f"pageable copies of {_size(nbytes)} (GB/s)", "| threads | chunk | h2d | d2h |",
             "|---|---|---|---|"]
    try:
        with alloc(nbytes, tag="bench") as buf:
            for t in threads:
                for c in chunks:
                    configure_staging(threads=t, chunk_bytes=c)
                    h2d = _gbps(nbytes, _median(lambda: buf.copy_from(host), budget_s))
                    d2h = _gbps(nbytes, _median(lambda: buf.copy_to(back), budget_s))
                    lines.append(f"| {t} | {_size(c)} | {h2d:.1f} | {d2h:.1f} |")
    finally:
        configure_staging(threads=before.threads, chunk_bytes=before.chunk_bytes,
                          min_bytes=before.min_bytes, buffers=before.buffers)
    return "\n".join(lines)


def pageable_fixed_cost(
    sizes: tuple[int, ...] = (8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB, 128 * MIB, 256 * MIB),
    budget_s: float = 0.3,
) -> str:
    """What a pageable copy costs whatever its size, and its bandwidth once running: the median
    time of each size fitted by least squares as ``fixed + bytes / bandwidth``, per direction
    (what keeps 64 MiB copies below the larger ones' bandwidth)."""
    rng = np.random.default_rng()
    host = rng.integers(0, 256, max(sizes), dtype=np.uint8)
    back = np.empty_like(host)
    lines = ["pageable copies: time = fixed + bytes / bandwidth, fitted over "
             + ", ".join(_size(n) for n in sizes),
             "| direction | fixed (ms) | bandwidth (GB/s) | worst fit error |", "|---|---|---|---|"]
    with alloc(max(sizes), tag="bench") as buf:
        for direction in ("h2d", "d2h"):
            times = []
            for n in sizes:
                part, out = host[:n], back[:n]
                fn = (lambda: buf.copy_from(part)) if direction == "h2d" else (lambda: buf.copy_to(out))
                times.append(_median(fn, budget_s))
            slope, fixed = np.polyfit(np.array(sizes, float), np.array(times), 1)
            worst = max(abs(fixed + slope * n - t) / t for n, t in zip(sizes, times))
            lines.append(f"| {direction.upper()} | {fixed * 1e3:.3f} | {1 / slope / 1e9:.1f} | "
                         f"{worst * 100:.1f}% |")
    return "\n".join(lines)
