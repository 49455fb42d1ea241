"""``vramobs demo``: an inference-like workload through vramobs while ``/metrics`` is served.

Weights are loaded once; each request copies its input activations in, grows a KV cache
block by block as it "generates", reads its output back on a stream into pinned memory, and
releases its KV cache, so live memory rises and falls like a server's. ``--leak`` plants two kinds of leak: every 10th
request keeps an activation buffer forever (a live leak: ``leak_report()`` names the line),
and every 25th drops one without closing it (freed by the garbage collector, counted in
``vramobs_leaked_buffers_total`` with a ResourceWarning).
"""

from __future__ import annotations

import os
import sys
import random
import time
import warnings
from dataclasses import dataclass
from typing import Optional

from . import DeviceBuffer, PinnedBuffer, alloc, device, exporter, leaks, pinned_empty, to_device

__all__ = ["Workload", "run"]

MIB = 1 << 20


@dataclass(frozen=True)
class Workload:
    """Sizes of one demo; ``for_backend`` scales them to the device."""

    layers: int
    layer_bytes: int
    kv_block_bytes: int
    max_kv_blocks: int
    activation_bytes: int

    @classmethod
    def for_backend(cls, backend: str) -> Workload:
        if backend == "cuda":
            return cls(layers=16, layer_bytes=128 * MIB, kv_block_bytes=16 * MIB,
                       max_kv_blocks=24, activation_bytes=4 * MIB)
        return cls(layers=8, layer_bytes=4 * MIB, kv_block_bytes=MIB,
                   max_kv_blocks=12, activation_bytes=256 * 1024)


class _Server:
    def __init__(self, workload: Workload, leak: bool) -> None:
        self.workload = workload
        self.leak = leak
        self.weights: list[DeviceBuffer] = []
        self.kept: list[DeviceBuffer] = []  # the planted live leak
        self.output: Optional[PinnedBuffer] = None  # page-locked: read back asynchronously
        self.requests = 0

    def load_weights(self) -> None:
        self.output = pinned_empty(self.workload.activation_bytes)
        for _ in range(self.workload.layers):
            self.weights.append(to_device(os.urandom(self.workload.layer_bytes), tag="weights"))

    def serve_one(self, rng: random.Random) -> None:
        w = self.workload
        self.requests += 1
        activations = to_device(os.urandom(w.activation_bytes), tag="activations")
        kv: list[DeviceBuffer] = []
        try:
            for _ in range(rng.randint(1, w.max_kv_blocks)):  # tokens generated
                block = alloc(w.kv_block_bytes, tag="kv_cache")
                kv.append(block)
                block.copy_from(os.urandom(4096), offset=rng.randrange(w.kv_block_bytes - 4096))
            activations.copy_to_async(self.output, stream=None).wait()  # the default stream
        finally:
            for block in kv:
                block.close()
        if self.leak and self.requests % 10 == 0:
            self.kept.append(activations)  # never closed: a live leak
        elif self.leak and self.requests % 25 == 0:
            del activations  # dropped open: its finalizer frees it and counts a leak
        else:
            activations.close()

    def close(self) -> None:
        for buf in self.weights + self.kept:
            buf.close()
        if self.output is not None:
            self.output.close()


def run(
    *,
    port: int,
    duration: Optional[float],
    rate: float,
    leak: bool,
    addr: str = "0.0.0.0",
) -> int:
    """Serve /metrics on ``port`` and run the workload for ``duration`` seconds (forever if
    None) at ``rate`` requests per second."""
    backend = device.backend()
    if backend == "host":
        print("vramobs demo: HOST BACKEND - device memory is emulated in host RAM; no GPU is "
              "measured", file=sys.stderr, flush=True)
    device.device_count()  # no device: NoDeviceError, before anything starts
    server, _ = exporter.start_http_server(port, addr)
    print(f"vramobs demo: backend {backend}; metrics on http://{addr}:{port}/metrics", flush=True)
    workload = Workload.for_backend(backend)
    app = _Server(workload, leak)
    rng = random.Random()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # counted and exported instead
        try:
            app.load_weights()
            deadline = None if duration is None else time.monotonic() + duration
            while deadline is None or time.monotonic() < deadline:
                started = time.monotonic()
                app.serve_one(rng)
                if app.requests % 50 == 0:
                    print(f"{app.requests} requests; {device.get_info()}", flush=True)
                time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
        except KeyboardInterrupt:
            pass
        finally:
            if leak:  # the planted live leak: activations kept past their request
                print(leaks.leak_report(limit=3, tag="activations"), flush=True)
            app.close()
            server.shutdown()
    print(f"vramobs demo: {app.requests} requests served", flush=True)
    return 0
