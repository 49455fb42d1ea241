"""Serving ``/metrics`` and ``/healthz``: an embedded HTTP server for any service, and WSGI
and ASGI apps for services that already run a web server.

``/healthz`` answers 200 while every device is usable and 503 once one has latched failed
(or when there is no device at all), with a one-line reason; ``/metrics`` keeps serving
either way, and says what failed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any, Callable, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry

from ._native import NativeLibraryError
from .collector import VramCollector
from .device import DeviceState, device_count, device_state
from .errors import VramError

__all__ = ["health", "make_wsgi_app", "make_asgi_app", "start_http_server", "default_registry"]

_lock = threading.Lock()
_registry: Optional[CollectorRegistry] = None


def default_registry() -> CollectorRegistry:
    """A registry with vramobs' collector, made once (prometheus_client's global REGISTRY is
    left to the service, which may register its own metrics there and vramobs' too)."""
    global _registry
    with _lock:
        if _registry is None:
            registry = CollectorRegistry(auto_describe=False)
            VramCollector(registry)
            _registry = registry
        return _registry


def health() -> tuple[bool, str]:
    """(healthy, reason): healthy while every device is usable."""
    try:
        count = device_count()
    except (VramError, NativeLibraryError) as exc:
        return False, f"no device: {exc}"
    states = [device_state(d) for d in range(count)]
    failed = [d for d, s in enumerate(states) if s is DeviceState.FAILED]
    unavailable = [d for d, s in enumerate(states) if s is DeviceState.UNAVAILABLE]
    if failed or unavailable:
        reasons = []
        if failed:
            reasons.append(f"devices failed (restart the process): {failed}")
        if unavailable:
            reasons.append(f"devices unavailable: {unavailable}")
        return False, "; ".join(reasons)
    return True, f"{count} devices usable"


_Start = Callable[[str, list[tuple[str, str]]], Any]


def make_wsgi_app(registry: Optional[CollectorRegistry] = None) -> Callable[[dict, _Start], Iterable[bytes]]:
    """A WSGI app serving ``/metrics`` (Prometheus text, gzip when asked) and ``/healthz``."""
    metrics = prometheus_client.make_wsgi_app(registry or default_registry())

    def app(environ: dict, start_response: _Start) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, reason = health()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8")],
            )
            return [reason.encode() + b"\n"]
        return metrics(environ, start_response)

    return app


def make_asgi_app(registry: Optional[CollectorRegistry] = None) -> Callable[..., Any]:
    """An ASGI app serving ``/metrics`` and ``/healthz``."""
    metrics = prometheus_client.make_asgi_app(registry or default_registry())

    async def app(scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/healthz":
            ok, reason = health()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if ok else 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": reason.encode() + b"\n"})
            return
        await metrics(scope, receive, send)

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def start_http_server(
    port: int = 9405, addr: str = "0.0.0.0", registry: Optional[CollectorRegistry] = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` and ``/healthz`` from a daemon thread; returns (server, thread).

    The default, 9405, stays clear of dcgm-exporter (9400) on the same host.
    """
    server = make_server(
        addr, port, make_wsgi_app(registry), _ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="vramobs-exporter", daemon=True)
    thread.start()
    return server, thread
