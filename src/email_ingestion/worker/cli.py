"""`python worker.py --consumer NAME`: handle the streams' emails through a consumer group.

Several streams (`--stream a --stream b`, WORKER_STREAMS=a,b): one loop each, see streams.py.

Exit status: 0 stopped cleanly (or --burst done), 1 failed (or a handler call timed out), 2 bad
setting, 3 Redis refused the credentials.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.cli_args import add_version
from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.exits import EXIT_OK, EXIT_SETTINGS
from email_ingestion.common.gc_tuning import tune_after_start_up
from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.logging import Redactor, setup_logging
from email_ingestion.common.redis_client import describe, make_redis
from email_ingestion.common.settings import Settings, load_settings, log_warnings
from email_ingestion.monitoring.collectors import ProcessCollector, StreamCollector, StreamsCollector
from email_ingestion.monitoring.health import Liveness, start_health
from email_ingestion.monitoring.metrics import WorkerMetricFamilies, WorkerMetrics
from email_ingestion.worker import timings
from email_ingestion.worker.assembly import build_processor
from email_ingestion.worker.handlers import load_handler
from email_ingestion.worker.kernel_timer import KernelTimer
from email_ingestion.worker.key_migration import migrate
from email_ingestion.worker.loop import LoopSettings, WorkerLoop
from email_ingestion.worker.recovery import Recovery
from email_ingestion.worker.redis_wait import RedisWait
from email_ingestion.worker.retries import RetrySchedule
from email_ingestion.worker.streams import StreamWorkers

log = logging.getLogger("email_ingestion.worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version(p)
    p.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}",
                   help="consumer name, unique per worker (default: hostname-pid)")
    p.add_argument("--stream", action="append",
                   help="a stream to read; repeat for several (WORKER_STREAMS; default REDIS_STREAM_NAME)")
    p.add_argument("--group", help="WORKER_GROUP (default email_processor_group)")
    p.add_argument("--batch-size", type=int, help="WORKER_BATCH_SIZE: entries per XREADGROUP")
    p.add_argument("--block-timeout", type=int, help="WORKER_BLOCK_TIMEOUT_MS")
    p.add_argument("--handler", help="WORKER_HANDLER: log | noop | jsonl:PATH | webhook:URL | module:callable")
    p.add_argument("--handler-path", action="append", metavar="DIR",
                   help="WORKER_HANDLER_PATH: a directory holding your handler's module; repeat for several")
    p.add_argument("--burst", action="store_true", help="exit 0 once nothing is pending and nothing new arrives")
    p.add_argument("--redis-url", help="REDIS_URL")
    p.add_argument("--metrics-port", type=int, help="WORKER_METRICS_PORT (0 disables)")
    p.add_argument("--log-level", help="LOG_LEVEL")
    p.add_argument("--log-format", choices=("json", "text"), help="LOG_FORMAT")
    p.add_argument("--env-file", default=".env")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "redis": {"url": args.redis_url},
        "worker": {"streams": ",".join(args.stream) if args.stream else None,
                   "group": args.group, "batch_size": args.batch_size, "block_timeout_ms": args.block_timeout,
                   "handler": args.handler, "metrics_port": args.metrics_port,
                   "handler_path": os.pathsep.join(args.handler_path) if args.handler_path else None},
        "log": {"level": args.log_level, "format": args.log_format},
    }


def build_workers(settings: Settings, consumer: str, stop_event: threading.Event,
                  out_of_time: Callable[[], bool] = lambda: False, clock_ms: Clock = wall_ms,
                  streams: Sequence[str] | None = None, hard_deadline: bool = False) -> StreamWorkers:
    """Wire a loop per stream (default: every configured one) and serve their endpoints;
    nothing connects until they run. `hard_deadline` (the worker process, main thread
    only) lets a kernel timer end the process when a handler call holds the GIL past its
    timeout (kernel_timer.py)."""
    timings.check(settings.worker, settings.retry, settings.health, settings.redis)
    names = list(streams or settings.worker_streams())
    families = WorkerMetricFamilies()
    timer = KernelTimer(timeout_s=settings.retry.handler_timeout_seconds)
    if hard_deadline:
        timer.install()
    loops = [build_loop(settings, stream, consumer, stop_event, out_of_time, clock_ms, families,
                        breaker_name="redis" if len(names) == 1 else f"redis:{stream}", timer=timer)
             for stream in names]
    workers = StreamWorkers(loops)
    expose(workers, settings)
    return workers


def build_worker(settings: Settings, consumer: str, stop_event: threading.Event,
                 out_of_time: Callable[[], bool] = lambda: False, clock_ms: Clock = wall_ms) -> WorkerLoop:
    """The worker of the first configured stream alone, endpoints served (in-process tests)."""
    return build_workers(settings, consumer, stop_event, out_of_time, clock_ms, settings.worker_streams()[:1]).loops[0]


def build_loop(settings: Settings, stream: str, consumer: str, stop_event: threading.Event,
               out_of_time: Callable[[], bool], clock_ms: Clock, families: WorkerMetricFamilies,
               breaker_name: str = "redis", timer: KernelTimer | None = None) -> WorkerLoop:
    """One stream's loop, with a Redis client, handler and recovery of its own."""
    retry, health = settings.retry, settings.health
    handler = load_handler(settings.worker.handler, retry, settings.handler_path())
    client = make_redis(settings.redis)
    keys = StreamKeys.of(stream, settings.worker.group, retry.dlq_stream_name)
    metrics = WorkerMetrics(keys.stream, keys.group, families=families)
    redis_wait = RedisWait(stop_event, Liveness(health.stall_seconds),
                           CircuitBreaker(breaker_name, health.breaker_failures, health.breaker_reset_seconds))
    retries = RetrySchedule(client, keys=keys)
    recovery = Recovery(client, keys=keys, consumer=consumer, claim_min_idle_ms=retry.claim_min_idle_ms,
                        hard_limit_ms=retry.claim_hard_limit_ms, heartbeat_ttl_ms=retry.heartbeat_ttl_ms)
    processor = build_processor(
        client, settings=settings, keys=keys, consumer=consumer, handler=handler, retries=retries,
        recovery=recovery, metrics=metrics, redis_wait=redis_wait,
        timer=timer or KernelTimer(timeout_s=retry.handler_timeout_seconds), clock_ms=clock_ms)
    loop = LoopSettings(keys, consumer, settings.worker.batch_size, settings.worker.block_timeout_ms)
    return WorkerLoop(client, loop=loop, processor=processor, retries=retries, recovery=recovery,
                      metrics=metrics, stop_event=stop_event, redis_wait=redis_wait, out_of_time=out_of_time)


def expose(workers: StreamWorkers, settings: Settings) -> None:
    """/health, /ready, /status and /metrics on WORKER_METRICS_PORT (0: none)."""
    registry = workers.registry
    registry.register(StreamsCollector([StreamCollector(loop.redis, loop.loop.keys.stream, loop.loop.keys.group,
                                                        loop.loop.keys.dlq) for loop in workers.loops]))
    registry.register(ProcessCollector(workers.liveness, workers.breakers, "worker"))
    handler = settings.worker.handler.split(":", 1)[0]
    start_health(registry, workers.liveness, workers.ready, lambda: workers.status(handler),
                 settings.worker.metrics_port, settings.health.host, "WORKER_METRICS_PORT")


class Shutdown:
    """SIGTERM/SIGINT: stop reading, let the batch in hand finish until the timeout."""

    def __init__(self, timeout_s: float) -> None:
        self.event = threading.Event()
        self.timeout_s = timeout_s
        self._deadline: float | None = None

    def request(self, signum: int, _frame: Any) -> None:
        if not self.event.is_set():
            log.info("stop requested: finishing the messages in hand",
                     extra={"signal": signal.Signals(signum).name, "timeout_s": self.timeout_s})
            self._deadline = time.monotonic() + self.timeout_s
        self.event.set()

    def out_of_time(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline


def upgrade_keys(workers: StreamWorkers, dlq_name: str) -> None:
    """Move retries and dead letters from the key names that tagged streams used to share
    (key_migration.py); a Redis that cannot be reached now is retried at the next start."""
    for loop in workers.loops:
        try:
            migrate(loop.redis, loop.loop.keys, dlq_name)
        except redis.RedisError as exc:
            log.warning("could not check for retries under old key names; checked again at the next start",
                        extra={"stream": loop.loop.stream, "error": type(exc).__name__})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(overrides(args), env_file=args.env_file)
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    setup_logging(settings.log.level, settings.log.format, "worker", Redactor(settings.secrets()))
    log_warnings(settings, log)
    shutdown = Shutdown(settings.worker.shutdown_timeout_seconds)
    signal.signal(signal.SIGTERM, shutdown.request)
    signal.signal(signal.SIGINT, shutdown.request)
    try:
        workers = build_workers(settings, args.consumer, shutdown.event, shutdown.out_of_time, hard_deadline=True)
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    return run(workers, settings, args.burst)


def run(workers: StreamWorkers, settings: Settings, burst: bool) -> int:
    first = workers.loops[0].loop
    log.info("worker starting", extra={
        "consumer": first.consumer, "stream": ",".join(workers.streams), "group": first.group,
        "handler": settings.worker.handler.split(":", 1)[0], "redis": describe(settings.redis), "burst": burst})
    tune_after_start_up()
    upgrade_keys(workers, settings.retry.dlq_stream_name)
    try:
        status = workers.run(burst)
    finally:
        workers.stop_beating()
    if status != EXIT_OK:
        return status
    stats = workers.stats()
    log.info("worker stopped", extra={"processed": stats.processed, "failed": stats.failed,
                                      "dead_lettered": stats.dead_lettered, "busy_s": round(stats.busy_s, 3)})
    return EXIT_OK
