"""Turning each message's outcome into its part of the settlement: a done marker and an
ack, a retry scheduled with backoff, a dead letter, a deferral behind another worker's
lease, or a lease given back. Nothing here talks to Redis: it queues what the settle step
(settle.py) lands in one MULTI."""

from __future__ import annotations

import logging

from email_ingestion.common.clock import Clock
from email_ingestion.common.text import to_text
from email_ingestion.worker.backoff import Backoff
from email_ingestion.worker.batch import DeadLetterNote, Leased, Settlement
from email_ingestion.worker.call import CallOutcome
from email_ingestion.worker.dead_letter import DeadLetter, DeadLetterQueue
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.describe import ErrorDescription
from email_ingestion.worker.idempotency import Idempotency
from email_ingestion.worker.retries import RetryRecord, RetrySchedule

log = logging.getLogger("email_ingestion.worker.processor")


class Outcomes:
    def __init__(self, *, consumer: str, idempotency: Idempotency, retries: RetrySchedule, dlq: DeadLetterQueue,
                 backoff: Backoff, clock_ms: Clock) -> None:
        self.consumer = consumer
        self.idempotency = idempotency
        self.retries = retries
        self.dlq = dlq
        self.backoff = backoff
        self.clock_ms = clock_ms

    def record(self, outcome: CallOutcome, batch: Settlement) -> None:
        """One handler call's outcome, whatever it was."""
        if outcome.error is None:
            self.done(outcome.leased, batch)
        elif outcome.permanent:
            batch.result.failed += 1
            self.dead(batch, outcome.leased.delivery, "permanent", outcome.error, outcome.leased)
        else:
            self.failed(batch, outcome.leased, outcome.error, timed_out=outcome.timed_out,
                        counted=outcome.counts_toward_retries)

    def done(self, leased: Leased, batch: Settlement) -> None:
        batch.done_keys.append(leased.payload.idempotency_key)
        batch.ack_ids.append(leased.delivery.entry_id)
        batch.result.processed += 1

    def duplicate(self, leased: Leased, batch: Settlement) -> None:
        batch.ack_ids.append(leased.delivery.entry_id)
        batch.result.duplicates += 1

    def failed(self, batch: Settlement, leased: Leased, error: ErrorDescription, *, timed_out: bool = False,
               counted: bool = True) -> None:
        """A retry with backoff, or the DLQ once retries are used up. `counted=False` (an
        outage, not this message's fault) retries without using up an attempt."""
        delivery = leased.delivery
        attempts = delivery.attempt + (1 if counted else 0)
        batch.result.failed += 1
        if counted and self.backoff.gives_up_after(attempts):
            self.dead(batch, delivery, "timeout" if timed_out else "max_retries", error, leased)
            return
        delay_s = self.backoff.delay_s(max(attempts, 1))
        record = RetryRecord(to_text(delivery.payload), attempts, delivery.first_failed_ms or self.clock_ms(),
                             error.summary[:500], delivery.original_id, delivery.delivered - 1)
        self._schedule(batch, delivery.entry_id, record, int(delay_s * 1000), *leased.lease_item)
        batch.result.retried += 1
        log.warning("handler failed; retry scheduled", extra={
            "stream_id": delivery.entry_id, "attempt": attempts, "retry_in_s": round(delay_s, 2),
            "error": error.type_name})

    def defer(self, batch: Settlement, leased: Leased) -> None:
        """Another worker holds the lease: look again once it would have expired. The new
        entry carries the delivery count, so deferral cannot reset the poison limit."""
        delivery = leased.delivery
        record = RetryRecord(to_text(delivery.payload), delivery.attempt, delivery.first_failed_ms,
                             delivery.last_error, delivery.original_id, delivery.delivered - 1)
        self._schedule(batch, delivery.entry_id, record, self.idempotency.lease_ms, leased.payload.idempotency_key, "")
        batch.result.deferred += 1

    def release(self, batch: Settlement, leased: list[Leased]) -> None:
        """Give back the leases of messages not handled (stop, timeout): they stay pending."""
        if leased:
            items = [c.lease_item for c in leased]
            batch.actions.append(lambda pipe: self.idempotency.release(pipe, items))

    def dead(self, batch: Settlement, delivery: Delivery, reason: str, error: ErrorDescription,
             leased: Leased | None = None) -> None:
        now = self.clock_ms()
        letter = DeadLetter(
            payload=to_text(delivery.payload), original_id=delivery.original_id,
            reason=reason, error_type=error.type_name, error_message=error.message, traceback=error.trace,
            attempts=delivery.attempt + (0 if reason == "invalid_payload" else 1),
            first_failure_ms=delivery.first_failed_ms or now, last_failure_ms=now, consumer=self.consumer)
        key, lease = leased.lease_item if leased else ("", "")
        batch.actions.append(lambda pipe: self.dlq.send(pipe, delivery.entry_id, letter, key, lease))
        batch.result.dead_lettered += 1
        # Logged by the settle step once the letter has landed and has its DLQ id.
        batch.dead_letters.append(DeadLetterNote(action_index=len(batch.actions) - 1, stream_id=delivery.entry_id,
                                                 original_id=delivery.original_id, reason=reason,
                                                 error_type=error.type_name))

    def _schedule(self, batch: Settlement, entry_id: str, record: RetryRecord, delay_ms: int, key: str,
                  lease: str) -> None:
        batch.actions.append(lambda pipe: self.retries.schedule(pipe, entry_id, record, delay_ms, key, lease))
