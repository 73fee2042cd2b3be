"""The worker loop: keep a heartbeat, move due retries back, reclaim orphans now and then,
read a batch through the consumer group, hand it to the BatchProcessor."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.text import to_text
from email_ingestion.monitoring.metrics import WorkerMetrics
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.processor import BatchProcessor
from email_ingestion.worker.recovery import Recovery
from email_ingestion.worker.redis_wait import Interrupted, RedisWait
from email_ingestion.worker.retries import RetrySchedule, moved_reply
from email_ingestion.worker.stats import WorkerStats

log = logging.getLogger(__name__)

RECLAIM_INTERVAL_S = 5.0
RECLAIM_MAX_PER_ROUND = 1000


@dataclass(frozen=True)
class LoopSettings:
    keys: StreamKeys
    consumer: str
    batch_size: int
    block_ms: int
    reclaim_interval_s: float = RECLAIM_INTERVAL_S

    @property
    def stream(self) -> str:
        return self.keys.stream

    @property
    def group(self) -> str:
        return self.keys.group


class WorkerLoop:
    def __init__(self, client: redis.Redis, *, loop: LoopSettings, processor: BatchProcessor,
                 retries: RetrySchedule, recovery: Recovery, metrics: WorkerMetrics, stop_event: threading.Event,
                 redis_wait: RedisWait, out_of_time: Callable[[], bool] = lambda: False) -> None:
        self.redis = client
        self.loop = loop
        self.processor = processor
        self.retries = retries
        self.recovery = recovery
        self.metrics = metrics
        self.stop_event = stop_event
        self.redis_wait = redis_wait
        self.out_of_time = out_of_time
        self.liveness = redis_wait.liveness
        self.breaker = redis_wait.breaker
        self.stats = WorkerStats()
        self._started = False  # our previous life's entries are taken back on the first start only
        self._beaten_at = 0.0  # monotonic: when the loop last renewed the heartbeat

    def status(self) -> dict[str, Any]:
        """The worker's part of the /status body: who it is and what it has done."""
        return {"component": "worker", "consumer": self.loop.consumer, "stream": self.loop.stream,
                "group": self.loop.group, "counters": self.stats.counters(),
                "circuit_breakers": {self.breaker.name: self.breaker.snapshot()},
                "redis_unavailable": self.redis_wait.reason, "retries_waiting": self.retries.waiting()}

    def ready(self) -> tuple[bool, str]:
        """Not ready while Redis refuses us (down, LOADING, READONLY, OOM) or the group is gone."""
        if self.redis_wait.reason:
            return False, self.redis_wait.reason
        groups = {to_text(g["name"]) for g in self.redis.xinfo_groups(self.loop.stream)}
        if self.loop.group not in groups:
            return False, f"consumer group {self.loop.group} does not exist"
        return True, "ok"

    def ensure_group(self) -> None:
        """Create the group idempotently, from id 0 so a backlog that predates it is read."""
        try:
            self.redis.xgroup_create(self.loop.stream, self.loop.group, id="0", mkstream=True)
            log.info("consumer group created", extra={"stream": self.loop.stream, "group": self.loop.group})
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, burst: bool = False) -> None:
        """Until stopped (or, with `burst`, drained); Redis refusals are waited out."""
        with contextlib.suppress(Interrupted):
            self.redis_wait.call(lambda: self._run(burst), "the worker loop", give_up=self.stop_event.is_set)

    def _run(self, burst: bool) -> None:
        self.ensure_group()
        self._beat()
        # Our previous life's entries, whatever their idle time; after a Redis outage within
        # this life, only those idle past CLAIM_MIN_IDLE_MS (each claim counts a delivery).
        self._recover(own_idle_ms=None if self._started else 0)
        self._started = True
        self.redis_wait.succeeded()
        next_reclaim = time.monotonic() + self.loop.reclaim_interval_s
        waiting = False
        while not self.stop_event.is_set():
            self.liveness.tick()
            if time.monotonic() >= next_reclaim:
                self._recover()
                next_reclaim = time.monotonic() + self.loop.reclaim_interval_s
            deliveries, next_due_in_ms = self._beat_move_due_and_read()
            # Nothing ready: block for new entries (or until the next retry is due). A burst
            # does not block until it has found nothing to do, so that waiting for its own
            # stranded entries is not a busy loop.
            block_ms = None if deliveries else self._block_ms(next_due_in_ms, burst and not waiting)
            if block_ms is not None:
                deliveries = self._read(block_ms)
            waiting = False
            if deliveries:
                self._process(deliveries)
            # Before a burst calls it done, it takes over what dead consumers left behind.
            elif burst and not self._recover():
                if self._drained():
                    log.info("burst: nothing left to do", extra={"processed": self.stats.processed})
                    return
                waiting = True

    def _beat_move_due_and_read(self) -> tuple[list[Delivery], int | None]:
        """Renew the heartbeat, move due retries back and read what is ready without
        blocking, in one round trip; returns the deliveries and the ms until the next retry
        is due."""
        pipe = self.redis.pipeline(transaction=False)
        self.recovery.beat(pipe)
        self._beaten_at = time.monotonic()
        self.retries.move_due_in(pipe)
        pipe.xreadgroup(self.loop.group, self.loop.consumer, {self.loop.stream: ">"}, count=self.loop.batch_size)
        try:
            _, moved, reply = pipe.execute()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # the group (or the stream) was deleted under us
            return [], None
        return _deliveries(reply), moved_reply(moved)[1]

    def _recover(self, own_idle_ms: int | None = None) -> int:
        """Claim and settle orphans one at a time (see recovery.py for why), our own
        entries idle past CLAIM_MIN_IDLE_MS included (a reply lost on the way to us)."""
        count = 0
        while count < RECLAIM_MAX_PER_ROUND and not self.stop_event.is_set():
            self.liveness.tick()
            if time.monotonic() - self._beaten_at >= self.processor.timings.renew_interval_s:
                self._beat()  # a long round of quick orphans must not make us look dead
            claimed = self.recovery.reclaim(own_idle_ms=own_idle_ms, limit=1).deliveries
            if not claimed:
                break
            self._count_reclaimed(claimed)
            self._process(claimed)
            count += len(claimed)
        return count

    def _beat(self) -> None:
        self.recovery.beat()
        self._beaten_at = time.monotonic()

    def _read(self, block_ms: int) -> list[Delivery]:
        try:
            reply: Any = self.redis.xreadgroup(self.loop.group, self.loop.consumer, {self.loop.stream: ">"},
                                               count=self.loop.batch_size, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # the group (or the stream) was deleted under us
            return []
        return _deliveries(reply)

    def _block_ms(self, next_due_in_ms: int | None, burst: bool) -> int | None:
        """How long XREADGROUP may block: None (not at all) for a burst with no retry to wait for."""
        if burst and next_due_in_ms is None:
            return None
        block = self.loop.block_ms if next_due_in_ms is None else min(self.loop.block_ms, next_due_in_ms)
        return max(1, block)

    def _drained(self) -> bool:
        mine = self.redis.xpending_range(self.loop.stream, self.loop.group, min="-", max="+", count=1,
                                         consumername=self.loop.consumer)
        return not mine and self.retries.waiting() == 0

    def _count_reclaimed(self, deliveries: list[Delivery]) -> None:
        self.stats.reclaimed += len(deliveries)
        self.metrics.orphans.inc(len(deliveries))

    def _process(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        if self.stats.first_read_at is None:
            self.stats.first_read_at = time.monotonic()
        result = self.processor.process(deliveries, self.out_of_time)
        self.stats.last_settled_at = time.monotonic()
        self.stats.add(result)


def _deliveries(reply: Any) -> list[Delivery]:
    return [Delivery.from_redis(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]
