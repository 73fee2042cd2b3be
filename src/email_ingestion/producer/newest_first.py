"""INITIAL_SYNC_ORDER=newest: a first sync that brings the latest mail first (issue 20).

The sweep goes down from the highest UID the mailbox had when it began (`sweep_top`) to
the lowest one to sync (`sweep_bottom`: 1, or the first UID of INITIAL_SYNC=since:),
batch by batch, newest batch first. The mailbox's position (`last_uid`) stays where it was
while the sweep runs, since UIDs below the newest are not done yet; after each batch the
lowest UID done is stored (`sweep_floor`), so an interrupted sweep resumes below it and at
most the batch in flight is fetched again. When the sweep reaches the bottom, the position
moves to the top in one fenced write and the ordinary ascending sync takes over for mail
that arrived meanwhile.

A batch whose stream write succeeded but whose floor was not stored (a crash between the
two) is sent again on resume: on Gmail the identity store drops it; elsewhere workers'
idempotency keys (imap:<account>:<mailbox>:<uidvalidity>:<uid>) do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from email_ingestion.common.redis_client import redis_errors
from email_ingestion.producer.state import StateStore
from email_ingestion.producer.windows import Batch, UidWindows

_FIELDS = ("sweep_top", "sweep_floor", "sweep_bottom")
CHUNK_BATCHES = 4  # UIDs searched at a time, in batches: the SEARCHes of a chunk come before its first batch


@dataclass(frozen=True)
class Sweep:
    top: int
    floor: int  # the lowest UID done; the next batch lies below it
    bottom: int


class SweepState:
    def __init__(self, *, store: StateStore) -> None:
        self.store = store

    def load(self) -> Sweep | None:
        with redis_errors("sweep state"):
            values = self.store.redis.hmget(self.store.keys.state, list(_FIELDS))
        if values[0] is None:
            return None
        top, floor, bottom = (int(v or 0) for v in values)
        return Sweep(top, floor, bottom)

    def start(self, *, uidvalidity: int, top: int, bottom: int, since_ms: int) -> Sweep:
        """The mailbox's first state, then the sweep's; a crash in between leaves an ordinary
        (oldest-first) first sync from `bottom`."""
        if bottom > 1:  # INITIAL_SYNC=since: the mail below is the baseline (state.py)
            self.store.start(uidvalidity, position=bottom - 1, since_ms=since_ms, baseline_until=bottom - 1)
        else:
            self.store.emit(uidvalidity, 0, [], since_ms=since_ms)
        with redis_errors("sweep state"):
            self.store.redis.hset(self.store.keys.state, mapping={"sweep_top": top, "sweep_floor": top + 1,
                                                                  "sweep_bottom": bottom})
        return Sweep(top, top + 1, bottom)

    def done_down_to(self, uid: int) -> None:
        with redis_errors("sweep state"):
            self.store.redis.hset(self.store.keys.state, "sweep_floor", uid)

    def finish(self, *, uidvalidity: int, sweep: Sweep) -> None:
        self.store.emit(uidvalidity, sweep.top, [])
        self.clear()

    def clear(self) -> None:
        with redis_errors("sweep state"):
            self.store.redis.hdel(self.store.keys.state, *_FIELDS)


def newest_first(windows: Callable[[int, int], UidWindows], *, bottom: int, top: int,
                 chunk_uids: int) -> Iterator[Batch]:
    """The batches of bottom..top, the newest batch first (UIDs ascending within a batch)."""
    high = top
    while high >= max(bottom, 1):
        low = max(bottom, high - chunk_uids + 1, 1)
        yield from reversed(list(windows(low, high)))
        high = low - 1
