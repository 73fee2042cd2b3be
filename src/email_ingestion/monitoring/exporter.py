"""`email-ingest exporter --port P`: the queue's gauges and Redis's memory, from outside
every producer and worker, so a backlog stays visible while all of them are down.

Serves /metrics, /health, /ready (Redis reachable) and /status on HEALTH_HOST:P. Gauges are
computed at scrape time; the exporter holds no state and may run anywhere Redis can be
reached (one per Redis is enough; two only duplicate series that the alerts `max by`).
It covers the streams the workers read (WORKER_STREAMS or --stream, repeated; else
REDIS_STREAM_NAME): one sample per stream, labelled `stream`.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from email_ingestion import __version__
from email_ingestion.admin.common import EXIT_SETTINGS, Target, load, parser, targets
from email_ingestion.common.errors import SettingsError
from email_ingestion.monitoring.collectors import ProcessCollector, StreamCollector, StreamsCollector, stream_figures
from email_ingestion.monitoring.health import Liveness, start_health
from email_ingestion.monitoring.redis_memory import RedisCollector

DEFAULT_PORT = 9120
TICK_S = 1.0


def registry_for(where: list[Target], liveness: Liveness) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StreamsCollector([StreamCollector(t.client, t.stream, t.group, t.dlq) for t in where]))
    registry.register(RedisCollector(where[0].client, [t.keys.retries for t in where]))
    registry.register(ProcessCollector(liveness, [], "exporter"))
    Gauge("email_ingestion_build_info", "Build information", ("version", "component"),
          registry=registry).labels(__version__, "exporter").set(1)
    return registry


def serve(where: list[Target], host: str, port: int, stop: threading.Event) -> None:
    liveness = Liveness(stall_s=30 * TICK_S)

    def ready() -> tuple[bool, str]:
        where[0].client.ping()
        return True, "ok"

    def status() -> dict[str, Any]:
        first = where[0]
        body: dict[str, Any] = {"component": "exporter", "stream": first.stream, "group": first.group,
                                "figures": stream_figures(first.client, first.stream, first.group, first.dlq)}
        if len(where) > 1:
            body["streams"] = {t.stream: stream_figures(t.client, t.stream, t.group, t.dlq) for t in where}
        return body

    server = start_health(registry_for(where, liveness), liveness, ready, status, port, host, "--port")
    # Operators starting it by hand need to know where to point Prometheus.
    print(f"exporter: listening on http://{host}:{port}/metrics (streams {', '.join(t.stream for t in where)}, "
          f"group {where[0].group})", flush=True)
    try:
        while not stop.wait(TICK_S):
            liveness.tick()
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = parser("email-ingest exporter", "Prometheus exporter for the streams, the group, the DLQs and Redis memory.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port of /metrics (default {DEFAULT_PORT})")
    p.add_argument("--host", help="address to listen on (default HEALTH_HOST, 127.0.0.1)")
    args = p.parse_args(argv)
    settings = load(args, "exporter")
    if settings is None:
        return EXIT_SETTINGS
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve(targets(settings), args.host or settings.health.host, args.port, stop)
    except SettingsError as exc:
        print(f"exporter: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    return 0


if __name__ == "__main__":
    sys.exit(main())
