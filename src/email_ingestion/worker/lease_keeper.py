"""While a batch is in hand: renew its leases and the heartbeat, keep its stream entries from
looking idle, know how fresh the leases are, and stop a handler call that outlives
HANDLER_TIMEOUT_SECONDS.

Touching the entries (recovery.Recovery.touch) matters for batches of slow handlers: the
last message of 500 that take 10 s each waits over an hour in the PEL, past
CLAIM_HARD_LIMIT_MS, and the hard-limit sweep would take it from a worker that is alive and
about to handle it.

Python cannot stop a thread, so a hung handler is not interrupted: past its timeout this
thread stops renewing anything, hands the message to `on_timeout` (which records it as
failed with reason `timeout`, settles what the batch has done, gives back the leases of the
batch-mates not yet handled, and ends the process) for the supervisor (systemd
Restart=always) to start a fresh worker. Nothing a hung call holds stays alive: not its
leases, not the heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from email_ingestion.common.redis_client import REDIS_FAILURES
from email_ingestion.worker.idempotency import Idempotency

if TYPE_CHECKING:
    from email_ingestion.worker.processor import Leased

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, idempotency: Idempotency, items: list[tuple[str, str]], entry_ids: list[str], *,
                 heartbeat: Callable[[], None], touch: Callable[[list[str]], object], interval_s: float,
                 handler_timeout_s: float, on_timeout: Callable[[int], None], confirmed_at: float,
                 fresh_s: float) -> None:
        self.idempotency = idempotency
        # Replaced whole (never mutated) by keep(): the renewing thread reads them unlocked.
        self.items = items
        self.entry_ids = entry_ids
        self.heartbeat = heartbeat
        self.touch = touch
        self.interval_s = interval_s
        self.handler_timeout_s = handler_timeout_s
        self.on_timeout = on_timeout
        self.confirmed_at = confirmed_at  # monotonic: when every lease was last known ours
        self.fresh_s = fresh_s  # how long after confirmed_at no lease can be another's
        self._lock = threading.Lock()
        self._call: tuple[int, float] | None = None  # (index in the batch, monotonic start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        if self.items:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def is_fresh(self) -> bool:
        """True while no lease of the batch can have expired (monotonic clock: a frozen
        process, a suspended VM or a clock jump all show as time passed)."""
        return time.monotonic() - self.confirmed_at < self.fresh_s

    def keep(self, remaining: Sequence[Leased]) -> None:
        """After a partial settlement: renew only what is still to be handled."""
        self.items = [leased.lease_item for leased in remaining]
        self.entry_ids = [leased.delivery.entry_id for leased in remaining]

    def calling(self, index: int) -> None:
        """Before one handler call; `called()` after it, in a finally. (Two methods rather
        than a context manager: this runs once per message on the hot path.)"""
        with self._lock:
            self._call = (index, time.monotonic())

    def called(self) -> None:
        """If the call timed out meanwhile, the process is ending: block here rather than
        record an outcome the timeout already recorded."""
        with self._lock:
            self._call = None

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait_s()):
            if self._timed_out():
                return
            self._renew()

    def _next_wait_s(self) -> float:
        call = self._call
        if call is None:
            return self.interval_s
        return max(0.01, min(self.interval_s, call[1] + self.handler_timeout_s - time.monotonic()))

    def _timed_out(self) -> bool:
        with self._lock:
            call = self._call
            if call is None or time.monotonic() - call[1] < self.handler_timeout_s:
                return False
            self.on_timeout(call[0])  # ends the process while holding the lock
        return True

    def _renew(self) -> None:
        started = time.monotonic()
        items, entry_ids = self.items, self.entry_ids
        try:
            renewed = self.idempotency.renew(items)
            self.heartbeat()
            self.touch(entry_ids)
        except REDIS_FAILURES as exc:  # whatever the reply: renew again next interval
            log.warning("lease renewal failed", extra={"error": type(exc).__name__})
            return
        if renewed == len(items):
            self.confirmed_at = started
