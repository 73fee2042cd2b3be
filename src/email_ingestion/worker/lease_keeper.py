"""While a batch is in hand: renew its leases and the heartbeat, keep its stream entries from
looking idle, and know how fresh the leases are.

Touching the entries (recovery.Recovery.touch) matters for batches of slow handlers: the
last message of 500 that take 10 s each waits over an hour in the PEL, past
CLAIM_HARD_LIMIT_MS, and the hard-limit sweep would take it from a worker that is alive and
about to handle it. A renewal that fails is logged and tried again next interval: the
freshness check before each call (leasing.py) covers what it missed. The deadline of a
hung call is not this thread's business (deadline.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from email_ingestion.worker.idempotency import Idempotency
from email_ingestion.worker.redis_wait import WAIT_ERRORS

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, idempotency: Idempotency, *, items: list[tuple[str, str]], entry_ids: list[str],
                 heartbeat: Callable[[], None], touch: Callable[[list[str]], object], interval_s: float,
                 confirmed_at: float, fresh_s: float) -> None:
        self.idempotency = idempotency
        # Replaced whole (never mutated) by keep(): the renewing thread reads them unlocked.
        self.items = items
        self.entry_ids = entry_ids
        self.heartbeat = heartbeat
        self.touch = touch
        self.interval_s = interval_s
        self.confirmed_at = confirmed_at  # monotonic: when every lease was last known ours
        self.fresh_s = fresh_s  # how long after confirmed_at no lease can be another's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        if self.items:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def is_fresh(self) -> bool:
        """True while no lease of the batch can have expired (monotonic clock: a frozen
        process, a suspended VM or a clock jump all show as time passed)."""
        return time.monotonic() - self.confirmed_at < self.fresh_s

    def keep(self, items: list[tuple[str, str]], entry_ids: list[str]) -> None:
        """After a partial settlement: renew only what is still to be handled."""
        self.items, self.entry_ids = items, entry_ids

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._renew()

    def _renew(self) -> None:
        started = time.monotonic()
        items, entry_ids = self.items, self.entry_ids
        try:
            renewed = self.idempotency.renew(items)
            self.heartbeat()
            self.touch(entry_ids)
        except WAIT_ERRORS as exc:
            log.warning("lease renewal failed", extra={"error": type(exc).__name__})
            return
        if renewed == len(items):
            self.confirmed_at = started
