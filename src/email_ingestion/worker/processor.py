"""Handling one batch of deliveries, as a pipeline of steps with one job each:

    admission.py  read:   dead-letter what must not be called again, parse, drop in-batch copies
    leasing.py    lease:  take the leases in one round trip; re-check a lease gone stale
    call.py       call:   one handler call, whatever it raises, as a CallOutcome (+ observers)
    outcomes.py   record: each outcome as its part of the settlement (ack, retry, DLQ, ...)
    settle.py     settle: land the settlement in one MULTI, as often as the cadence asks
    deadline.py   the soft deadline of a call; kernel_timer.py the hard one;
    timeout_exit.py       what a call past its soft deadline ends in (settle, exit 1)
    lease_keeper.py       renew leases and the heartbeat while the batch is in hand

This module only runs them in order, and counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.payload import EmailPayload
from email_ingestion.common.text import ms_from_iso
from email_ingestion.monitoring.metrics import WorkerMetrics
from email_ingestion.worker.admission import Admission
from email_ingestion.worker.batch import BatchResult, Leased, Settlement
from email_ingestion.worker.call import CallOutcome, HandlerCall
from email_ingestion.worker.deadline import CallWatch, Deadline
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.handlers import Handler
from email_ingestion.worker.idempotency import Idempotency
from email_ingestion.worker.lease_keeper import LeaseKeeper
from email_ingestion.worker.leasing import Leasing
from email_ingestion.worker.outcomes import Outcomes
from email_ingestion.worker.recovery import Recovery
from email_ingestion.worker.settle import SettleCadence, Settler
from email_ingestion.worker.timeout_exit import TimeoutExit
from email_ingestion.worker.timings import ProcessorTimings

log = logging.getLogger(__name__)

OutOfTime = Callable[[], bool]

__all__ = ["BatchProcessor", "BatchResult", "ProcessorTimings"]


class BatchProcessor:
    def __init__(self, *, admission: Admission, leasing: Leasing, call: HandlerCall, outcomes: Outcomes,
                 settler: Settler, deadline: Deadline, timeout_exit: TimeoutExit, recovery: Recovery,
                 metrics: WorkerMetrics,
                 timings: ProcessorTimings, clock_ms: Clock = wall_ms) -> None:
        self.admission = admission
        self.leasing = leasing
        self.call = call
        self.outcomes = outcomes
        self.settler = settler
        self.deadline = deadline
        self.timeout_exit = timeout_exit
        self.recovery = recovery  # the heartbeat, and touching entries in hand
        self.metrics = metrics
        self.timings = timings
        self.clock_ms = clock_ms

    @property
    def handler(self) -> Handler:
        return self.call.handler

    @handler.setter
    def handler(self, handler: Handler) -> None:
        self.call.handler = handler

    @property
    def idempotency(self) -> Idempotency:
        return self.leasing.idempotency

    def process(self, deliveries: list[Delivery], out_of_time: OutOfTime = lambda: False) -> BatchResult:
        batch = Settlement()
        candidates = self.admission.admit(deliveries, batch)
        confirmed_at = time.monotonic()  # before the leases are asked for: they live from then
        to_handle = self.leasing.acquire(candidates, batch) if candidates else []
        if to_handle:
            with self._keeper(to_handle, confirmed_at) as keeper, \
                    self.deadline.watch(lambda index: self.timeout_exit(batch, to_handle, index)) as watch:
                self._handle_all(to_handle, batch, keeper, watch, out_of_time)
        self.settler.settle(batch, out_of_time)
        self._count(batch.result)
        return batch.result

    def _handle_all(self, to_handle: list[Leased], batch: Settlement, keeper: LeaseKeeper, watch: CallWatch,
                    out_of_time: OutOfTime) -> None:
        cadence = SettleCadence(interval_ms=self.timings.settle_interval_ms,
                                max_messages=self.timings.settle_max_messages)
        for index, leased in enumerate(to_handle):
            if out_of_time():
                self.outcomes.release(batch, to_handle[index:])
                batch.result.unfinished = len(to_handle) - index
                return
            if not keeper.is_fresh():
                watch.pause()  # the re-check may wait on Redis: not a hung handler
            ours = self.leasing.still_ours(leased, keeper, batch.result)
            if ours is None:  # Redis cannot say: keep what was handled, leave the rest pending
                batch.result.unfinished = len(to_handle) - index
                return
            if ours:
                self._record(self.call(leased, watch, index), batch)
            if cadence.handled() and index + 1 < len(to_handle):
                # Settle what is done so far: a kill or a freeze repeats at most a cadence's work.
                watch.pause()
                self.settler.settle(batch, out_of_time)
                rest = to_handle[index + 1:]
                keeper.keep([c.lease_item for c in rest], [c.delivery.entry_id for c in rest])
                cadence.restart()

    def _record(self, outcome: CallOutcome, batch: Settlement) -> None:
        self.metrics.latency.observe(outcome.duration_s)
        self.outcomes.record(outcome, batch)
        if outcome.ok:
            self._observe_done(outcome.leased.payload)

    def _keeper(self, to_handle: list[Leased], confirmed_at: float) -> LeaseKeeper:
        return LeaseKeeper(self.leasing.idempotency, items=[c.lease_item for c in to_handle],
                           entry_ids=[c.delivery.entry_id for c in to_handle], heartbeat=self.recovery.beat,
                           touch=self.recovery.touch, interval_s=self.timings.renew_interval_s,
                           confirmed_at=confirmed_at, fresh_s=self.timings.fresh_s)

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
