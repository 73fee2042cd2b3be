"""The consumer's heartbeat, kept alive on a thread and a connection of its own (issue 19
item 13).

Before, the loop renewed the heartbeat once per read. A partition that swallowed the reply
to a blocked XREADGROUP held the loop until the socket timeout (10 s by default), and the
heartbeat lapsed although the worker was fine: a 2 s partition looked like 4 s of death to
the rescuers. Now a thread renews it at a fixed rate, every third of HEARTBEAT_TTL_MS, on
a client of its own whose connect and read timeouts are half that interval and which does
not retry by itself: a lost reply costs one renewal, never the heartbeat. So no setting can
let one lost reply outlive it; only Redis unreachable for longer than about a third of
HEARTBEAT_TTL_MS can (and then the worker may well be cut off: that is what the heartbeat
is for).

The key's value is the worker's state for `email-ingest status`: a JSON object with
`handler_outage` (null, or cause, error, since_ms, probes, next_probe_in_s) and
`redis_unavailable` (null, or why Redis refuses this worker).

A renewal that fails is logged at once (WARNING), and its recovery once (INFO).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from email_ingestion.common.redis_client import REDIS_FAILURES
from email_ingestion.worker.describe import describe

log = logging.getLogger(__name__)

FAILURES = REDIS_FAILURES


def heartbeat_record(handler_outage: Callable[[], dict[str, object] | None],
                     redis_unavailable: Callable[[], str | None]) -> Callable[[], str]:
    """The heartbeat key's value, rebuilt at every renewal."""
    return lambda: json.dumps({"handler_outage": handler_outage(), "redis_unavailable": redis_unavailable()})


def client_timeout_s(heartbeat_ttl_ms: int) -> float:
    """Connect and read timeout of the heartbeat's own client: half a renewal interval."""
    return renew_interval_s(heartbeat_ttl_ms) / 2


def renew_interval_s(heartbeat_ttl_ms: int) -> float:
    return heartbeat_ttl_ms / 3000


class HeartbeatThread:
    """Renews one heartbeat key at a fixed rate until stopped."""

    def __init__(self, client: Any, *, key: str, ttl_ms: int, record: Callable[[], str]) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.interval_s = renew_interval_s(ttl_ms)
        self.record = record
        self._stop = threading.Event()
        # Held while a renewal is in flight: stop() waits for it, so no SET lands after the
        # caller deletes the key (a timed-out handler's worker must look dead at once).
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.key}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """No renewal after this returns (one in flight is waited for: at most the client's
        timeout)."""
        self._stop.set()
        with self._lock:
            pass

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.renew()
            # Fixed rate: a renewal that waited for a lost reply does not push the next one back.
            next_at = max(next_at + self.interval_s, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def renew(self) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            try:
                self.client.set(self.key, self.record(), px=self.ttl_ms)
            except FAILURES as exc:
                self._failed(exc)
                return False
            self._renewed()
            return True

    def _failed(self, exc: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("heartbeat renewal failed: Redis unreachable or refusing; renewing again in %.1f s",
                        self.interval_s, extra={"error": describe(exc).summary[:500], "heartbeat_ttl_ms": self.ttl_ms})

    def _renewed(self) -> None:
        if self._failing_since is not None:
            log.info("heartbeat renewed again", extra={"after_s": round(time.monotonic() - self._failing_since, 2)})
            self._failing_since = None
