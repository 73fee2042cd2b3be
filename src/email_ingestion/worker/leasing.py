"""The lease step: take the batch's leases in one round trip, and before each call make sure
the message's lease is still ours.

A message whose key is done already is acknowledged as a duplicate; one whose lease
another live worker holds is deferred (looked at again once that lease would have expired).
"""

from __future__ import annotations

import logging

from email_ingestion.worker.batch import BatchResult, Leased, Settlement
from email_ingestion.worker.idempotency import Idempotency, LeaseState
from email_ingestion.worker.lease_keeper import LeaseKeeper
from email_ingestion.worker.outcomes import Outcomes
from email_ingestion.worker.redis_wait import WAIT_ERRORS

log = logging.getLogger("email_ingestion.worker.processor")


class Leasing:
    def __init__(self, *, idempotency: Idempotency, outcomes: Outcomes) -> None:
        self.idempotency = idempotency
        self.outcomes = outcomes

    def acquire(self, candidates: list[Leased], batch: Settlement) -> list[Leased]:
        """The candidates whose lease is now ours; the others are settled as duplicates or deferred."""
        states = self.idempotency.acquire([c.lease_item for c in candidates])
        to_handle = []
        for leased, state in zip(candidates, states, strict=True):
            if state is LeaseState.ACQUIRED:
                to_handle.append(leased)
            elif state is LeaseState.DONE:
                self.outcomes.duplicate(leased, batch)
            else:
                self.outcomes.defer(batch, leased)
        return to_handle

    def still_ours(self, leased: Leased, keeper: LeaseKeeper, result: BatchResult) -> bool | None:
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
