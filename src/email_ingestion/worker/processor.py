"""Handling one batch of deliveries: validate, lease, call the handler, then settle every
message in one MULTI (done markers + acks, retries, dead letters).

Round trips per batch, whatever its size: one for the leases, one for settling.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import redis
from pydantic import ValidationError

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.errors import PermanentError
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import EmailPayload
from email_ingestion.common.text import ms_from_iso, to_text
from email_ingestion.monitoring.metrics import WorkerMetrics
from email_ingestion.worker.backoff import Backoff
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.dead_letter import DeadLetter, DeadLetterQueue
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.handlers import Handler
from email_ingestion.worker.idempotency import Idempotency, LeaseState, lease_value
from email_ingestion.worker.retries import RetryRecord, RetrySchedule

log = logging.getLogger(__name__)
handler_log = logging.getLogger("email_ingestion.worker.handler")


@dataclass
class Leased:
    delivery: Delivery
    payload: EmailPayload
    lease: str

    @property
    def lease_item(self) -> tuple[str, str]:
        return self.payload.idempotency_key, self.lease


@dataclass
class Settlement:
    """What the batch's final MULTI acknowledges: done markers, then acks."""

    done_keys: list[str]
    ack_ids: list[str]


@dataclass
class BatchResult:
    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    retried: int = 0
    deferred: int = 0
    unfinished: int = 0


class BatchProcessor:
    def __init__(self, client: redis.Redis, *, consumer: str, handler: Handler, idempotency: Idempotency,
                 retries: RetrySchedule, dlq: DeadLetterQueue, backoff: Backoff, max_deliveries: int,
                 metrics: WorkerMetrics, heartbeat: Callable[[], None], clock_ms: Clock = wall_ms) -> None:
        self.redis = client
        self.consumer = consumer
        self.handler = handler
        self.idempotency = idempotency
        self.retries = retries
        self.dlq = dlq
        self.backoff = backoff
        self.max_deliveries = max_deliveries
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.clock_ms = clock_ms

    def process(self, deliveries: list[Delivery], out_of_time: Callable[[], bool] = lambda: False) -> BatchResult:
        result = BatchResult()
        settle = Settlement([], [])
        pipe = self.redis.pipeline(transaction=True)
        candidates = self._first_of_each_key([c for c in (self._admit(d, pipe, result) for d in deliveries)
                                              if c is not None], settle, result)
        states = self.idempotency.acquire([c.lease_item for c in candidates])
        to_handle = []
        for leased, state in zip(candidates, states, strict=True):
            if state is LeaseState.ACQUIRED:
                to_handle.append(leased)
            elif state is LeaseState.DONE:
                settle.ack_ids.append(leased.delivery.entry_id)
                result.duplicates += 1
            else:
                self._defer(pipe, leased, result)
        with _Renewer(self.idempotency, [c.lease_item for c in to_handle], self.heartbeat):
            for index, leased in enumerate(to_handle):
                if out_of_time():
                    self.idempotency.release(pipe, [c.lease_item for c in to_handle[index:]])
                    result.unfinished = len(to_handle) - index
                    break
                self._handle(leased, pipe, settle, result)
        self.idempotency.settle(pipe, settle.done_keys, settle.ack_ids)
        pipe.execute()
        self._count(result)
        return result

    def _first_of_each_key(self, candidates: list[Leased], settle: Settlement,
                           result: BatchResult) -> list[Leased]:
        """Copies of one message in one batch: the first carries it, the rest are duplicates."""
        seen: set[str] = set()
        first = []
        for leased in candidates:
            if leased.payload.idempotency_key in seen:
                settle.ack_ids.append(leased.delivery.entry_id)
                result.duplicates += 1
            else:
                seen.add(leased.payload.idempotency_key)
                first.append(leased)
        return first

    def _admit(self, delivery: Delivery, pipe: redis.client.Pipeline, result: BatchResult) -> Leased | None:
        """Dead-letter what must not be handled again; parse the rest."""
        if delivery.deliveries > self.max_deliveries:
            self._dead(pipe, delivery, "max_deliveries", "MaxDeliveriesExceeded",
                       f"delivered {delivery.deliveries - 1} times without acknowledgement "
                       f"(the handler keeps killing its worker?)", "", result)
            return None
        try:
            payload = EmailPayload.from_json(delivery.payload)
        except ValidationError as exc:
            self._dead(pipe, delivery, "invalid_payload", "ValidationError", _short(exc), "", result)
            return None
        return Leased(delivery, payload, lease_value(self.consumer, delivery.entry_id))

    def _handle(self, leased: Leased, pipe: redis.client.Pipeline, settle: Settlement, result: BatchResult) -> None:
        delivery, payload = leased.delivery, leased.payload
        with correlation(payload.correlation_id):
            ctx = HandlerContext(payload.idempotency_key, delivery.attempt + 1, delivery.entry_id,
                                 self.consumer, handler_log)
            started = time.perf_counter()
            try:
                self.handler(payload, ctx)
            except PermanentError as exc:
                result.failed += 1
                self._dead(pipe, delivery, "permanent", type(exc).__name__, str(exc), traceback.format_exc(),
                           result, leased)
            except Exception as exc:  # noqa: BLE001 - any other failure is retried
                self._failed(pipe, leased, exc, result)
            else:
                settle.done_keys.append(payload.idempotency_key)
                settle.ack_ids.append(delivery.entry_id)
                result.processed += 1
                self._observe_done(payload)
            finally:
                self.metrics.latency.observe(time.perf_counter() - started)

    def _failed(self, pipe: redis.client.Pipeline, leased: Leased, exc: Exception, result: BatchResult) -> None:
        delivery = leased.delivery
        attempts = delivery.attempt + 1
        result.failed += 1
        error = f"{type(exc).__name__}: {exc}"
        if self.backoff.gives_up_after(attempts):
            self._dead(pipe, delivery, "max_retries", type(exc).__name__, str(exc), traceback.format_exc(),
                       result, leased)
            return
        delay_s = self.backoff.delay_s(attempts)
        now = self.clock_ms()
        record = RetryRecord(to_text(delivery.payload), attempts, delivery.first_failed_ms or now, error[:500],
                             delivery.original_id)
        self.retries.schedule(pipe, delivery.entry_id, record, now + int(delay_s * 1000), *leased.lease_item)
        result.retried += 1
        log.warning("handler failed; retry scheduled", extra={
            "stream_id": delivery.entry_id, "attempt": attempts, "retry_in_s": round(delay_s, 2),
            "error": type(exc).__name__})

    def _defer(self, pipe: redis.client.Pipeline, leased: Leased, result: BatchResult) -> None:
        """Another worker holds the lease: look again once it would have expired."""
        delivery = leased.delivery
        record = RetryRecord(to_text(delivery.payload), delivery.attempt, delivery.first_failed_ms,
                             delivery.last_error, delivery.original_id)
        due = self.clock_ms() + self.idempotency.lease_ms
        self.retries.schedule(pipe, delivery.entry_id, record, due, leased.payload.idempotency_key, "")
        result.deferred += 1

    def _dead(self, pipe: redis.client.Pipeline, delivery: Delivery, reason: str, error_type: str, message: str,
              trace: str, result: BatchResult, leased: Leased | None = None) -> None:
        now = self.clock_ms()
        letter = DeadLetter(
            payload=to_text(delivery.payload), original_id=delivery.original_id,
            reason=reason, error_type=error_type, error_message=message, traceback=trace,
            attempts=delivery.attempt + (0 if reason == "invalid_payload" else 1),
            first_failure_ms=delivery.first_failed_ms or now, last_failure_ms=now, consumer=self.consumer)
        key, lease = leased.lease_item if leased else ("", "")
        self.dlq.send(pipe, delivery.entry_id, letter, key, lease)
        result.dead_lettered += 1
        log.error("message moved to the dead-letter queue", extra={
            "stream_id": delivery.entry_id, "reason": reason, "error_type": error_type})

    def _observe_done(self, payload: EmailPayload) -> None:
        if payload.internal_date:
            try:
                arrived = ms_from_iso(payload.internal_date)
            except ValueError:
                return
            self.metrics.end_to_end.observe(max(0.0, (self.clock_ms() - arrived) / 1000))

    def _count(self, result: BatchResult) -> None:
        self.metrics.processed.inc(result.processed)
        self.metrics.failed.inc(result.failed)
        self.metrics.dead_lettered.inc(result.dead_lettered)
        self.metrics.duplicates.inc(result.duplicates)
        self.metrics.retries.inc(result.retried)


class _Renewer:
    """While handlers run, renew this batch's leases and the heartbeat in the background."""

    def __init__(self, idempotency: Idempotency, items: list[tuple[str, str]], heartbeat: Callable[[], None]) -> None:
        self.idempotency = idempotency
        self.items = items
        self.heartbeat = heartbeat
        self.interval_s = max(idempotency.lease_ms / 3000, 0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)

    def __enter__(self) -> _Renewer:
        if self.items:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.idempotency.renew(self.items)
                self.heartbeat()
            except redis.RedisError as exc:
                log.warning("lease renewal failed", extra={"error": type(exc).__name__})


def _short(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(part) for part in first["loc"])
    return f"payload failed schema validation ({len(errors)} errors); first: {where}: {first['msg']}"
