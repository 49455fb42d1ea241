"""The ``vramobs`` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from . import __version__, _native, device
from .errors import VramError


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _info(args: argparse.Namespace) -> int:
    if args.backend:
        device.use_backend(args.backend)
    library_version = _native.lib().vram_version_string().decode()
    report: dict = {
        "vramobs": __version__,
        "library": str(_native.library_path()),
        "library_version": library_version,
        "backend": device.backend(),
        "python": sys.version.split()[0],
    }
    try:
        count = device.device_count()
    except VramError as exc:
        report["error"] = str(exc)
        _print(report, args.json)
        print(
            "vramobs: no usable device. On a machine without a GPU, try "
            "`vramobs info --backend host` (emulated device memory).",
            file=sys.stderr,
        )
        return 1
    report["devices"] = []
    for d in range(count):
        info = device.device_info(d)
        mem = device.get_info(d)
        report["devices"].append(
            {
                "index": d,
                "name": info.name,
                "uuid": info.uuid,
                "pci_bus_id": info.pci_bus_id,
                "compute_capability": "%d.%d" % info.compute_capability,
                "driver_version": info.driver_version,
                "state": device.device_state(d).name.lower(),
                "free_bytes": mem.free,
                "total_bytes": mem.total,
            }
        )
    _print(report, args.json)
    return 0


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for key in ("vramobs", "library_version", "library", "backend", "python", "error"):
        if key in report:
            print(f"{key:16} {report[key]}")
    for d in report.get("devices", []):
        print(
            f"device {d['index']:<9} {d['name']} ({d['uuid']}, {d['pci_bus_id']}, "
            f"cc {d['compute_capability']}, driver {d['driver_version']}, {d['state']})"
        )
        print(f"{'':16} free {_gib(d['free_bytes'])} of {_gib(d['total_bytes'])}")
    if report.get("backend") == "host":
        print("note: HOST BACKEND - device memory is emulated in host RAM; no GPU is used")


def _bench(args: argparse.Namespace) -> int:
    from . import bench  # numpy and the peers load only for this command

    if args.backend:
        device.use_backend(args.backend)
    if args.staging_sweep:
        print(bench.staging_sweep())
        print(bench.pageable_fixed_cost())
        return 0
    sizes = {} if not args.quick else {"copy_sizes": (4096, 1 << 20), "alloc_sizes": (4096,)}
    results = bench.run(budget_s=args.budget, **sizes)
    print(f"vramobs {__version__} bench, backend {device.backend()}")
    print(bench.markdown(results))
    print("\nPython layer, spans off (us per call; overhead = vramobs API - bare ctypes call)")
    print("| call | bare | vramobs | overhead |\n|---|---|---|---|")
    for what, bare, ours in bench.overhead(args.budget):
        print(f"| {what} | {bare * 1e6:.2f} | {ours * 1e6:.2f} | {(ours - bare) * 1e6:.2f} |")
    if device.backend() == "cuda" and not args.quick:
        print("\nTargets (ratios against peers measured in this run)")
        print(bench.targets_markdown(bench.measure_targets(args.budget)))
    live = 1000 if args.quick else 100_000
    print(f"\nscrape with {live} live allocations: {bench.scrape_seconds(live) * 1e3:.2f} ms"
          f" (with none: {bench.scrape_seconds(0) * 1e3:.2f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import time

    from . import exporter

    if args.backend:
        device.use_backend(args.backend)
    exporter.start_http_server(args.port, args.addr)
    print(f"vramobs: backend {device.backend()}; serving http://{args.addr}:{args.port}/metrics",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.backend:
        device.use_backend(args.backend)
    try:
        device.device_count()
    except VramError as exc:
        print(f"vramobs: {exc}", file=sys.stderr)
        print(
            "vramobs: the demo needs a GPU; on a machine without one, run "
            "`vramobs demo --backend host` (device memory emulated in host RAM).",
            file=sys.stderr,
        )
        return 1
    return demo.run(port=args.port, addr=args.addr, duration=args.duration, rate=args.rate,
                    leak=args.leak)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vramobs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vramobs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="backend, devices, free/total memory, driver, versions")
    info.add_argument("--backend", choices=("cuda", "host"), help="select a backend explicitly")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)
    bench = sub.add_parser("bench", help="time vramobs against raw CUDA, PyTorch and CuPy")
    bench.add_argument("--backend", choices=("cuda", "host"), help="select a backend explicitly")
    bench.add_argument("--quick", action="store_true", help="small sizes only")
    bench.add_argument("--budget", type=float, default=0.4, help="seconds per case (default 0.4)")
    bench.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    bench.add_argument("--staging-sweep", action="store_true",
                       help="only time pageable copies over staging threads x chunk sizes")
    bench.set_defaults(run=_bench)
    for name, run, text in (
        ("serve", _serve, "serve /metrics and /healthz"),
        ("demo", _demo, "run an inference-like workload while serving /metrics"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--backend", choices=("cuda", "host"), help="select a backend explicitly")
        command.add_argument("--port", type=int, default=9405, help="HTTP port (default 9405)")
        command.add_argument("--addr", default="0.0.0.0", help="address to listen on")
        command.set_defaults(run=run)
        if name == "demo":
            command.add_argument("--duration", type=float, help="seconds to run (default: until ^C)")
            command.add_argument("--rate", type=float, default=20.0, help="requests per second")
            command.add_argument("--leak", action="store_true", help="plant leaks to find")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (VramError, _native.NativeLibraryError) as exc:
        print(f"vramobs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
