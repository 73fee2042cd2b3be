"""The records a batch passes between its steps (read, lease, call, settle): what is in
hand, what the batch came to, and the settlement still to land."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.delivery import Delivery

# One queued part of a settlement: a script call added to the settling MULTI.
Action = Callable[[redis.client.Pipeline], None]


@dataclass(slots=True)
class Leased:
    """A delivery that passed admission, with the lease value this worker holds (or asks) for it."""

    delivery: Delivery
    payload: EmailPayload
    lease: str

    @property
    def lease_item(self) -> tuple[str, str]:
        return self.payload.idempotency_key, self.lease


@dataclass
class BatchResult:
    """What one batch came to, counted per message."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    retried: int = 0
    deferred: int = 0
    unfinished: int = 0
    lost: int = 0  # leases found taken by another worker before the handler ran: skipped


@dataclass(frozen=True, slots=True)
class DeadLetterNote:
    """A dead letter queued in a settlement, logged once it has landed with its DLQ id (what
    `email-dlq show` takes), not before: until then it has none."""

    action_index: int
    stream_id: str
    original_id: str
    reason: str
    error_type: str


@dataclass
class Settlement:
    """What the batch's next settling MULTI does: retry/DLQ/release scripts, done markers,
    acks. Kept as data until it has landed, so a failed MULTI can be replayed."""

    actions: list[Action] = field(default_factory=list)
    done_keys: list[str] = field(default_factory=list)
    ack_ids: list[str] = field(default_factory=list)
    result: BatchResult = field(default_factory=BatchResult)
    dead_letters: list[DeadLetterNote] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.actions or self.ack_ids)

    def clear(self) -> None:
        """After it landed: the batch's next settlement starts afresh (the result carries on)."""
        self.actions.clear()
        self.done_keys.clear()
        self.ack_ids.clear()
        self.dead_letters.clear()
