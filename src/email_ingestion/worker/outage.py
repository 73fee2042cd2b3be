"""The handler outage breaker (issue 19 item 4): when the handler fails for everyone, stop
taking messages instead of draining the stream into the DLQ.

A disk full under `jsonl:`, a database down, a webhook answering 503 to everything: every
message fails, with the same cause, through no fault of its own. Counting those failures
toward MAX_RETRIES dead-letters the whole stream within minutes. So:

- `HANDLER_OUTAGE_FAILURES` consecutive retryable failures of *different* messages that
  share a cause (the exception's type and its message with the varying parts taken out:
  numbers and other tokens holding a digit, quoted names, addresses, the file name of an
  OSError) open the breaker. One message failing again and
  again (a poison message) never does: it is one message, and goes to the DLQ as before.
- While open, the worker takes no messages (its heartbeat stays alive) and every probe
  interval hands ONE message to the handler; the interval doubles from
  `HANDLER_OUTAGE_PROBE_MIN_SECONDS` up to `HANDLER_OUTAGE_PROBE_MAX_SECONDS`. A success, or
  a PermanentError (the handler reached a verdict: its downstream answers), closes it.
- The failure that opens it, every failure with the same cause while it is open, and the
  batch-mates not yet handled are put back (scheduled again) with their attempt and
  delivery counts unchanged: an outage costs no message a retry. The failures before the
  one that opened it (at most HANDLER_OUTAGE_FAILURES - 1) were counted as ordinary ones.
- A probe that fails with another cause is that message's own failure: counted as usual,
  and the next probe comes at the shortest interval.

One breaker per stream loop (each has its handler object); it is not shared between
processes: each worker finds the outage out for itself, at the cost of N failures each.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.worker.call import CallOutcome
from email_ingestion.worker.describe import ErrorDescription

log = logging.getLogger("email_ingestion.worker.outage")

# What varies between messages failing for one reason: quoted names, addresses, and any
# token holding a digit (numbers, ports, ids, UUIDs, hex digests, request ids).
_VARYING = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),
    (re.compile(r"[\w.+-]+@[\w.-]+"), "…@…"),
    (re.compile(r"[\w.-]*\d[\w.-]*"), "#"),
)
CAUSE_MAX_CHARS = 200
DESCRIBE_MAX_CHARS = 500


def cause_of(error: ErrorDescription) -> str:
    """What failures of different messages have in common when one thing is broken: the
    exception's type and its message with what varies per message taken out (an OSError's
    text stays, its errno number and file name go)."""
    text = error.message
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return f"{error.type_name}: {text}"[:CAUSE_MAX_CHARS]


@dataclass(frozen=True)
class OutageState:
    """The open breaker, as /status, /ready and the heartbeat record show it."""

    cause: str  # the shared cause (normalised)
    error: str  # the last failure as it was raised (type: message), for people
    since_ms: int  # wall clock, when it opened
    probes: int  # probes that failed since
    next_probe_in_s: float

    def as_dict(self) -> dict[str, object]:
        return {"cause": self.cause, "error": self.error, "since_ms": self.since_ms, "probes": self.probes,
                "next_probe_in_s": round(self.next_probe_in_s, 3)}


class HandlerOutage:
    """Counts failures of different messages with one cause; opens, probes, closes."""

    def __init__(self, *, failures: int, probe_min_s: float, probe_max_s: float,
                 clock: Callable[[], float] = time.monotonic, clock_ms: Clock = wall_ms,
                 redact: Callable[[str], str] = lambda text: text) -> None:
        self.failures = failures
        # The error is shown on /status, /ready and in the heartbeat record, not only in logs:
        # it is redacted like a log line (a database URL in it may hold a password).
        self.redact = redact
        self.probe_min_s = probe_min_s
        self.probe_max_s = max(probe_min_s, probe_max_s)
        self._clock = clock
        self._clock_ms = clock_ms
        # Written by the loop's thread, read by the health server's: one lock, short holds.
        self._lock = threading.Lock()
        self._streak_cause: str | None = None
        self._streak_keys: set[str] = set()
        self._open: tuple[str, int] | None = None  # (cause, since_ms)
        self._error = ""
        self._probes = 0
        self._interval_s = probe_min_s
        self._next_probe_at = 0.0

    def is_open(self) -> bool:
        return self._open is not None

    def observe(self, outcome: CallOutcome) -> CallOutcome | None:
        """The call step's observer (call.py): every outcome passes here; an outage failure
        comes back marked as not counting toward MAX_RETRIES. A timeout is the deadline's."""
        if outcome.error is None or outcome.permanent:
            if self.succeeded():
                log.warning("handler outage over: taking messages again")
            return None
        if outcome.timed_out or not self.failed(outcome.leased.payload.idempotency_key, outcome.error):
            return None
        log.warning("handler outage: the failure does not count toward MAX_RETRIES",
                    extra={"stream_id": outcome.leased.delivery.entry_id, "error": outcome.error.summary[:500]})
        return outcome.replace(counts_toward_retries=False)

    def failed(self, message_key: str, error: ErrorDescription) -> bool:
        """Note a retryable failure of one message; True when it is an outage failure (put
        the message back uncounted), False when it is the message's own (count it)."""
        cause = cause_of(error)
        with self._lock:
            if self._open is not None:
                return self._failed_while_open(cause, error)
            if cause != self._streak_cause:
                self._streak_cause, self._streak_keys = cause, set()
            self._streak_keys.add(message_key)
            if len(self._streak_keys) < self.failures:
                return False
            self._open = (self.redact(cause), self._clock_ms())
            self._error = self.redact(error.summary[:DESCRIBE_MAX_CHARS])
            self._interval_s = self.probe_min_s
            self._next_probe_at = self._clock() + self._interval_s
            return True

    def _failed_while_open(self, cause: str, error: ErrorDescription) -> bool:
        assert self._open is not None
        if self.redact(cause) != self._open[0]:
            self._next_probe_at = self._clock() + self.probe_min_s
            return False
        self._probes += 1
        self._error = self.redact(error.summary[:DESCRIBE_MAX_CHARS])
        self._interval_s = min(self.probe_max_s, self._interval_s * 2)
        self._next_probe_at = self._clock() + self._interval_s
        return True

    def succeeded(self) -> bool:
        """The handler reached a verdict (success or PermanentError); True if this closed
        the breaker."""
        if self._open is None and self._streak_cause is None:  # the hot path: nothing to reset
            return False
        with self._lock:
            was_open = self._open is not None
            self._streak_cause, self._streak_keys = None, set()
            self._open = None
            self._probes = 0
            return was_open

    def probe_in_s(self) -> float:
        """Seconds until the next probe may take a message (0: now)."""
        return max(0.0, self._next_probe_at - self._clock())

    def retry_delay_ms(self) -> int:
        """When a message put back during the outage should be in the stream again."""
        return int(self._interval_s * 1000)

    def state(self) -> OutageState | None:
        with self._lock:
            if self._open is None:
                return None
            cause, since_ms = self._open
            return OutageState(cause, self._error, since_ms, self._probes, self.probe_in_s())


def snapshot(outage: HandlerOutage | None) -> dict[str, object] | None:
    """The open breaker as a dict (for /status and the heartbeat record), or None."""
    state = outage.state() if outage is not None else None
    return state.as_dict() if state is not None else None
