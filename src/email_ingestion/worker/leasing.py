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
        """The candidates whose lease is now ours; the others are settled as duplicates or
        deferred. Leases the read asked for already (read_lease.py) cost no round trip."""
        asked: list[Leased] = []
        rest: list[Leased] = []
        for leased in candidates:
            (asked if _asked_right(leased) else rest).append(leased)
        self._give_back_misread(rest, batch)
        states = [*self.idempotency.resolve([c.lease_item for c in asked], [_previous(c) for c in asked]),
                  *self.idempotency.acquire([c.lease_item for c in rest])]
        to_handle = []
        for leased, state in zip([*asked, *rest], states, strict=True):
            if state is LeaseState.ACQUIRED:
                to_handle.append(leased)
            elif state is LeaseState.DONE:
                self.outcomes.duplicate(leased, batch)
            else:
                self.outcomes.defer(batch, leased)
        if rest and asked:  # keep the stream's order: the read's leases first would reorder
            order = {id(c): i for i, c in enumerate(candidates)}
            to_handle.sort(key=lambda c: order[id(c)])
        return to_handle

    def _give_back_misread(self, rest: list[Leased], batch: Settlement) -> None:
        """A lease the read took under a key that is not the payload's: give it back."""
        items = [(c.delivery.lease_asked.key, c.lease) for c in rest
                 if c.delivery.lease_asked is not None and c.delivery.lease_asked.previous is None]
        if items:
            log.warning("read leased a key that is not the payload's; released", extra={"count": len(items)})
            batch.actions.append(lambda pipe: self.idempotency.release(pipe, items))

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


def _asked_right(leased: Leased) -> bool:
    asked = leased.delivery.lease_asked
    return asked is not None and asked.key == leased.payload.idempotency_key


def _previous(leased: Leased) -> bytes | None:
    asked = leased.delivery.lease_asked
    return None if asked is None else asked.previous
