"""Handling one batch of deliveries: validate, lease, call the handler, then settle every
message in one MULTI (done markers + acks, retries, dead letters).

Round trips per batch, whatever its size: one for the leases, one for settling. The
settlement is kept as data until it has landed: when Redis is down, restarting, loading or
full at that moment, it is replayed once Redis serves again, before anything new is read,
so a handled message is not handled again (every settling script tolerates a replay).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from pydantic import ValidationError

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.errors import HandlerTimeoutError, PermanentError
from email_ingestion.common.exits import EXIT_FAILED
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import EmailPayload
from email_ingestion.common.redis_client import Replication
from email_ingestion.common.text import ms_from_iso, to_text
from email_ingestion.monitoring.metrics import WorkerMetrics
from email_ingestion.worker.backoff import Backoff
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.dead_letter import DeadLetter, DeadLetterQueue
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.flow import FlowTally
from email_ingestion.worker.handlers import Handler
from email_ingestion.worker.idempotency import Idempotency, LeaseState, lease_value
from email_ingestion.worker.lease_keeper import LeaseKeeper
from email_ingestion.worker.redis_wait import WAIT_ERRORS, RedisWait
from email_ingestion.worker.retries import RetryRecord, RetrySchedule
from email_ingestion.worker.timings import lease_margin_ms

log = logging.getLogger(__name__)
handler_log = logging.getLogger("email_ingestion.worker.handler")

Action = Callable[[redis.client.Pipeline], None]

# While a settlement waits for Redis, it is retried at least this often: once Redis serves
# again, the worker that handled the batch should land its outcomes before anyone else
# finds the messages idle and takes them over.
SETTLE_RETRY_MAX_S = 1.0
# A timed-out batch's settlement is tried for this long before the process exits anyway
# (what it could not settle stays pending and is handled again).
TIMEOUT_SETTLE_S = 10.0


@dataclass
class Leased:
    delivery: Delivery
    payload: EmailPayload
    lease: str

    @property
    def lease_item(self) -> tuple[str, str]:
        return self.payload.idempotency_key, self.lease


@dataclass
class BatchResult:
    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    retried: int = 0
    deferred: int = 0
    unfinished: int = 0
    lost: int = 0  # leases found taken by another worker before the handler ran: skipped


@dataclass
class Settlement:
    """What the batch's final MULTI does: the retry/DLQ/release scripts, done markers, acks."""

    actions: list[Action] = field(default_factory=list)
    done_keys: list[str] = field(default_factory=list)
    ack_ids: list[str] = field(default_factory=list)
    result: BatchResult = field(default_factory=BatchResult)
    flow: FlowTally = field(default_factory=FlowTally)  # per-minute figures for the console


@dataclass(frozen=True)
class ProcessorTimings:
    lease_ms: int
    renew_interval_s: float
    handler_timeout_s: float
    heartbeat_ttl_ms: int


class BatchProcessor:
    def __init__(self, client: redis.Redis, *, consumer: str, handler: Handler, idempotency: Idempotency,
                 retries: RetrySchedule, dlq: DeadLetterQueue, backoff: Backoff, max_deliveries: int,
                 metrics: WorkerMetrics, heartbeat: Callable[..., None], stop_heartbeat: Callable[[], None],
                 touch: Callable[[list[str]], object],
                 redis_wait: RedisWait, timings: ProcessorTimings, clock_ms: Clock = wall_ms,
                 replication: Replication = Replication()) -> None:
        self.redis = client
        self.replication = replication
        self.consumer = consumer
        self.handler = handler
        self.idempotency = idempotency
        self.retries = retries
        self.dlq = dlq
        self.backoff = backoff
        self.max_deliveries = max_deliveries
        self.metrics = metrics
        self.heartbeat = heartbeat  # heartbeat() now, or heartbeat(pipe) queued in a pipeline
        self.touch = touch  # resets the PEL idle time of entries still in hand (recovery.py)
        self.stop_heartbeat = stop_heartbeat
        self.redis_wait = redis_wait
        self.timings = timings
        self.clock_ms = clock_ms

    def process(self, deliveries: list[Delivery], out_of_time: Callable[[], bool] = lambda: False) -> BatchResult:
        batch = Settlement()
        admitted = [c for c in (self._admit(d, batch) for d in deliveries) if c is not None]
        candidates = self._first_of_each_key(admitted, batch)
        confirmed_at = time.monotonic()
        to_handle = self._leased(candidates, self.idempotency.acquire([c.lease_item for c in candidates]), batch)
        with self._keeper(to_handle, batch, confirmed_at) as keeper:
            self._handle_all(to_handle, batch, keeper, out_of_time)
        self._settle(batch, out_of_time)
        self._count(batch.result)
        return batch.result

    def _handle_all(self, to_handle: list[Leased], batch: Settlement, keeper: LeaseKeeper,
                    out_of_time: Callable[[], bool]) -> None:
        settled_at = time.monotonic()
        for index, leased in enumerate(to_handle):
            if out_of_time():
                self._release(batch, to_handle[index:])
                batch.result.unfinished = len(to_handle) - index
                return
            ours = self._still_ours(leased, keeper, batch.result)
            if ours is None:  # Redis cannot say: keep what was handled, leave the rest pending
                batch.result.unfinished = len(to_handle) - index
                return
            if ours:
                self._handle(leased, batch, keeper, index)
            if time.monotonic() - settled_at >= self.timings.renew_interval_s and index + 1 < len(to_handle):
                # Slow handlers: settle what is done so far, so that a kill repeats at most a
                # renewal interval of work, not the whole batch.
                self._settle(batch, out_of_time)
                keeper.keep(to_handle[index + 1:])
                settled_at = time.monotonic()

    def _settle(self, batch: Settlement, out_of_time: Callable[[], bool]) -> None:
        """Land the settlement, waiting out Redis; then start the batch's next one afresh."""
        self.redis_wait.call(lambda: self._execute(batch), "settling a batch", give_up=out_of_time,
                             max_delay_s=SETTLE_RETRY_MAX_S)
        batch.actions.clear()
        batch.done_keys.clear()
        batch.ack_ids.clear()
        batch.flow.clear()

    def _keeper(self, to_handle: list[Leased], batch: Settlement, confirmed_at: float) -> LeaseKeeper:
        return LeaseKeeper(self.idempotency, [c.lease_item for c in to_handle],
                           [c.delivery.entry_id for c in to_handle], heartbeat=self.heartbeat, touch=self.touch,
                           interval_s=self.timings.renew_interval_s,
                           handler_timeout_s=self.timings.handler_timeout_s,
                           on_timeout=lambda index: self._timed_out(batch, to_handle, index),
                           confirmed_at=confirmed_at, fresh_s=self._fresh_s())

    def _fresh_s(self) -> float:
        # Others may take a lease over once our heartbeat is gone, before the lease expires:
        # ownership is sure for the shorter of the two, minus a margin.
        ownership_ms = min(self.timings.lease_ms, self.timings.heartbeat_ttl_ms)
        return (ownership_ms - lease_margin_ms(ownership_ms)) / 1000

    def _leased(self, candidates: list[Leased], states: list[LeaseState], batch: Settlement) -> list[Leased]:
        to_handle = []
        for leased, state in zip(candidates, states, strict=True):
            if state is LeaseState.ACQUIRED:
                to_handle.append(leased)
            elif state is LeaseState.DONE:
                batch.ack_ids.append(leased.delivery.entry_id)
                batch.result.duplicates += 1
            else:
                self._defer(batch, leased)
        return to_handle

    def _still_ours(self, leased: Leased, keeper: LeaseKeeper, result: BatchResult) -> bool | None:
        """Before a handler call: a lease that may have expired (the process was frozen, or
        renewals failed) is re-checked in Redis; a lease lost to another worker is skipped.
        None when Redis cannot answer: the outcomes so far must still be settled."""
        if keeper.is_fresh():
            return True
        try:
            if self.idempotency.confirm(leased.lease_item):
                return True
        except WAIT_ERRORS as exc:
            log.warning("lease re-check failed; the rest of the batch stays pending",
                        extra={"error": type(exc).__name__})
            return None
        result.lost += 1
        log.warning("lease lost before handling; skipped", extra={"stream_id": leased.delivery.entry_id})
        return False

    def _first_of_each_key(self, candidates: list[Leased], batch: Settlement) -> list[Leased]:
        """Copies of one message in one batch: the first carries it, the rest are duplicates."""
        seen: set[str] = set()
        first = []
        for leased in candidates:
            if leased.payload.idempotency_key in seen:
                batch.ack_ids.append(leased.delivery.entry_id)
                batch.result.duplicates += 1
            else:
                seen.add(leased.payload.idempotency_key)
                first.append(leased)
        return first

    def _admit(self, delivery: Delivery, batch: Settlement) -> Leased | None:
        """Dead-letter what must not be handled again; parse the rest."""
        if delivery.delivered > self.max_deliveries:
            self._dead(batch, delivery, "max_deliveries", "MaxDeliveriesExceeded",
                       f"delivered {delivery.delivered - 1} times without an outcome "
                       f"(the handler keeps killing its worker?)", "")
            return None
        try:
            payload = EmailPayload.from_json(delivery.payload)
        except ValidationError as exc:
            self._dead(batch, delivery, "invalid_payload", "ValidationError", _short(exc), "")
            return None
        return Leased(delivery, payload, lease_value(self.consumer, delivery.entry_id))

    def _handle(self, leased: Leased, batch: Settlement, keeper: LeaseKeeper, index: int) -> None:
        delivery, payload = leased.delivery, leased.payload
        with correlation(payload.correlation_id):
            ctx = HandlerContext(payload.idempotency_key, delivery.attempt + 1, delivery.entry_id,
                                 self.consumer, handler_log)
            started = time.perf_counter()
            keeper.calling(index)
            try:
                error = _call(self.handler, payload, ctx)
            finally:
                keeper.called()
            self.metrics.latency.observe(time.perf_counter() - started)
            self._outcome(leased, error, batch)

    def _outcome(self, leased: Leased, error: Exception | None, batch: Settlement) -> None:
        if error is None:
            batch.done_keys.append(leased.payload.idempotency_key)
            batch.ack_ids.append(leased.delivery.entry_id)
            batch.result.processed += 1
            self._observe_done(leased.payload, batch.flow)
        elif isinstance(error, PermanentError):
            batch.result.failed += 1
            self._dead(batch, leased.delivery, "permanent", type(error).__name__, str(error),
                       _trace(error), leased)
        else:
            self._failed(batch, leased, error)

    def _failed(self, batch: Settlement, leased: Leased, exc: Exception) -> None:
        delivery = leased.delivery
        attempts = delivery.attempt + 1
        batch.result.failed += 1
        if self.backoff.gives_up_after(attempts):
            reason = "timeout" if isinstance(exc, HandlerTimeoutError) else "max_retries"
            self._dead(batch, delivery, reason, type(exc).__name__, str(exc), _trace(exc), leased)
            return
        delay_s = self.backoff.delay_s(attempts)
        record = RetryRecord(to_text(delivery.payload), attempts, delivery.first_failed_ms or self.clock_ms(),
                             f"{type(exc).__name__}: {exc}"[:500], delivery.original_id, delivery.delivered - 1)
        self._schedule(batch, delivery.entry_id, record, int(delay_s * 1000), *leased.lease_item)
        batch.result.retried += 1
        log.warning("handler failed; retry scheduled", extra={
            "stream_id": delivery.entry_id, "attempt": attempts, "retry_in_s": round(delay_s, 2),
            "error": type(exc).__name__})

    def _defer(self, batch: Settlement, leased: Leased) -> None:
        """Another worker holds the lease: look again once it would have expired. The new
        entry carries the delivery count, so deferral cannot reset the poison limit."""
        delivery = leased.delivery
        record = RetryRecord(to_text(delivery.payload), delivery.attempt, delivery.first_failed_ms,
                             delivery.last_error, delivery.original_id, delivery.delivered - 1)
        self._schedule(batch, delivery.entry_id, record, self.idempotency.lease_ms, leased.payload.idempotency_key, "")
        batch.result.deferred += 1

    def _schedule(self, batch: Settlement, entry_id: str, record: RetryRecord, delay_ms: int, key: str,
                  lease: str) -> None:
        batch.actions.append(lambda pipe: self.retries.schedule(pipe, entry_id, record, delay_ms, key, lease))

    def _release(self, batch: Settlement, leased: list[Leased]) -> None:
        items = [c.lease_item for c in leased]
        batch.actions.append(lambda pipe: self.idempotency.release(pipe, items))

    def _dead(self, batch: Settlement, delivery: Delivery, reason: str, error_type: str, message: str,
              trace: str, leased: Leased | None = None) -> None:
        now = self.clock_ms()
        letter = DeadLetter(
            payload=to_text(delivery.payload), original_id=delivery.original_id,
            reason=reason, error_type=error_type, error_message=message, traceback=trace,
            attempts=delivery.attempt + (0 if reason == "invalid_payload" else 1),
            first_failure_ms=delivery.first_failed_ms or now, last_failure_ms=now, consumer=self.consumer)
        key, lease = leased.lease_item if leased else ("", "")
        batch.actions.append(lambda pipe: self.dlq.send(pipe, delivery.entry_id, letter, key, lease))
        batch.result.dead_lettered += 1
        log.error("message moved to the dead-letter queue", extra={
            "stream_id": delivery.entry_id, "reason": reason, "error_type": error_type})

    def _execute(self, batch: Settlement) -> None:
        pipe = self.redis.pipeline(transaction=True)
        # First, the heartbeat: after a long outage this replay must show us alive before
        # anyone takes the batch's messages over as a dead worker's.
        self.heartbeat(pipe)
        for action in batch.actions:
            action(pipe)
        self.idempotency.settle(pipe, batch.done_keys, batch.ack_ids)
        pipe.execute()
        self.replication.wait(self.redis, self.idempotency.keys.stream)  # REDIS_WAIT_REPLICAS
        batch.flow.record(self.redis, self.idempotency.keys, self.clock_ms())

    def _timed_out(self, batch: Settlement, to_handle: list[Leased], index: int) -> None:
        """From the lease keeper: the handler call on to_handle[index] is hung. Record it as
        failed (timeout), settle what the batch did, give back the rest, and exit."""
        timeout_s = self.timings.handler_timeout_s
        log.error("handler call timed out; exiting for the supervisor to restart the worker", extra={
            "stream_id": to_handle[index].delivery.entry_id, "handler_timeout_s": timeout_s})
        self._failed(batch, to_handle[index], HandlerTimeoutError(f"handler still running after {timeout_s} s"))
        self._release(batch, to_handle[index + 1:])
        deadline = time.monotonic() + TIMEOUT_SETTLE_S
        while True:
            try:
                self._execute(batch)
                self.stop_heartbeat()
                break
            except redis.RedisError as exc:
                if time.monotonic() >= deadline:
                    log.error("could not settle the timed-out batch; its messages stay pending",
                              extra={"error": type(exc).__name__})
                    break
                time.sleep(SETTLE_RETRY_MAX_S)
        logging.shutdown()
        os._exit(EXIT_FAILED)

    def _observe_done(self, payload: EmailPayload, flow: FlowTally) -> None:
        latency_ms = None
        if payload.internal_date:
            try:
                latency_ms = max(0, self.clock_ms() - ms_from_iso(payload.internal_date))
            except ValueError:
                pass
        flow.add(latency_ms)
        if latency_ms is not None:
            self.metrics.end_to_end.observe(latency_ms / 1000)

    def _count(self, result: BatchResult) -> None:
        self.metrics.processed.inc(result.processed)
        self.metrics.failed.inc(result.failed)
        self.metrics.dead_lettered.inc(result.dead_lettered)
        self.metrics.duplicates.inc(result.duplicates)
        self.metrics.retries.inc(result.retried)


def _call(handler: Handler, payload: EmailPayload, ctx: HandlerContext) -> Exception | None:
    try:
        handler(payload, ctx)
    except Exception as exc:  # noqa: BLE001 - any failure is an outcome; PermanentError goes to the DLQ
        return exc
    return None


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _short(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(part) for part in first["loc"])
    return f"payload failed schema validation ({len(errors)} errors); first: {where}: {first['msg']}"
