"""/health, /ready, /status and /metrics over HTTP, on 127.0.0.1 by default.

- /health: liveness. 200 while the process loop has ticked within `stall_s`, else 503.
- /ready: readiness. 200 when the process's own check passes (Redis reachable, IMAP session
  up and no backpressure for the producer; the consumer group exists for a worker), else 503.
- /status: JSON for people: version, uptime, breakers, counters, stream figures.
- /metrics: Prometheus exposition of the process's own registry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from email_ingestion import __version__

log = logging.getLogger(__name__)


class Live(Protocol):
    """What /health and the uptime gauge ask: a Liveness, or several joined (worker/streams.py)."""

    def alive(self) -> bool: ...

    def uptime_s(self) -> float: ...


class Liveness:
    """The loop calls tick(); /health fails when it stops doing so."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self._last = clock()
        self.started = clock()

    def tick(self) -> None:
        self._last = self._clock()

    def alive(self) -> bool:
        return self._clock() - self._last <= self.stall_s

    def uptime_s(self) -> float:
        return self._clock() - self.started


class HealthServer:
    def __init__(self, registry: CollectorRegistry, liveness: Live, ready: Callable[[], tuple[bool, str]],
                 status: Callable[[], dict[str, Any]], host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.liveness = liveness
        self.ready = ready
        self.status = status
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> HealthServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                code, body, kind = outer.route(self.path.split("?", 1)[0])
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True).start()
        log.info("health and metrics endpoints listening", extra={"address": f"http://{self.host}:{self.port}"})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def route(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/health":
            alive = self.liveness.alive()
            return _json(200 if alive else 503, {"status": "ok" if alive else "stalled"})
        if path == "/ready":
            ok, reason = _safe(self.ready)
            return _json(200 if ok else 503, {"ready": ok, "reason": reason})
        if path == "/status":
            try:
                body = self.status()
            except Exception as exc:  # noqa: BLE001 - /status must answer even when Redis is down
                body = {"error": f"{type(exc).__name__}: {exc}"}
            return _json(200, {"version": __version__, "uptime_s": round(self.liveness.uptime_s(), 1), **body})
        return _json(404, {"error": "not found", "paths": ["/health", "/ready", "/status", "/metrics"]})


def _safe(check: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a failing check means not ready
        return False, f"{type(exc).__name__}: {exc}"


def _json(code: int, body: dict[str, Any]) -> tuple[int, bytes, str]:
    return code, json.dumps(body, default=str).encode(), "application/json"


def start_health(registry: CollectorRegistry, liveness: Live, ready: Callable[[], tuple[bool, str]],
                 status: Callable[[], dict[str, Any]], port: int, host: str = "127.0.0.1",
                 setting: str = "the metrics port") -> HealthServer | None:
    """Port 0 disables the endpoints (N workers on one host must not collide)."""
    if not port:
        return None
    try:
        return HealthServer(registry, liveness, ready, status, host, port).start()
    except OSError as exc:
        from email_ingestion.common.errors import SettingsError
        raise SettingsError(f"invalid setting {setting}: cannot serve health/metrics on {host}:{port} "
                            f"({exc.strerror}); choose another port, or 0 to disable") from None
