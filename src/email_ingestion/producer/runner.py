"""One mailbox's life: connect, sync, wait for mail (IDLE or poll), and recover from failure.

Failures that pass by themselves (connection lost, Redis restarting, token endpoint down,
server throttling, a followed folder deleted and not yet re-created) are retried with
exponential backoff and full jitter; throttling answers add a longer pause so we never
hammer a server that asked us to slow down. Credentials that are refused, and a folder
missing before this mailbox was ever followed, end the runner: no amount of retrying fixes
them.

What the fleet sees of a runner: start, stop (and abort, at the end of a shutdown), a
snapshot of how it is doing, and how it ended (a LeaseLostError when a write was refused).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.errors import (
    AuthError,
    FolderGoneError,
    ImapConnectionClosedError,
    ImapConnectionError,
    ImapProtocolError,
    ImapThrottledError,
    MailboxNotFoundError,
    ParseWorkerError,
    RedisUnavailableError,
    ShutdownCutOff,
    TokenEndpointError,
)
from email_ingestion.common.settings import Settings
from email_ingestion.common.text import iso_from_epoch_s
from email_ingestion.imap.session import ImapSession
from email_ingestion.monitoring.health import Liveness
from email_ingestion.monitoring.metrics import ProducerMetrics
from email_ingestion.producer.activity import Activity, no_activity
from email_ingestion.producer.sync import MailboxSync

log = logging.getLogger(__name__)

TRANSIENT = (ImapConnectionError, ImapProtocolError, RedisUnavailableError, TokenEndpointError, ParseWorkerError,
             FolderGoneError, ShutdownCutOff)
ONCE_ATTEMPTS = 3


@dataclass
class RunnerStatus:
    connected: bool = False
    last_pass_ok_at: float | None = None
    passes: int = 0
    emitted: int = 0
    reconnects: int = 0
    uidvalidity_changes: int = 0
    failures_in_row: int = 0  # failed attempts since the last good pass
    folder_missing: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunnerSnapshot:
    """How a runner is doing, for the fleet's decisions and /ready."""

    running: bool
    connected: bool
    backpressured: bool
    failures_in_row: int
    alive: bool
    ended_with: BaseException | None  # None while running, or when it ended by being stopped


class ProducerRunner:
    def __init__(self, *, settings: Settings, session: ImapSession, sync: MailboxSync,
                 metrics: ProducerMetrics, stop_event: threading.Event,
                 clock: Callable[[], float] = time.time, activity: Activity | None = None) -> None:
        self.settings = settings
        self.activity = activity or no_activity()  # the mailbox's state, for the console
        self.session = session
        self.sync = sync
        self.metrics = metrics
        self.stop_event = stop_event
        self.status = RunnerStatus()
        self._clock = clock
        health = settings.health
        self.liveness = Liveness(health.stall_seconds)
        self.imap_breaker = CircuitBreaker("imap", health.breaker_failures, health.breaker_reset_seconds)
        self.redis_breaker = CircuitBreaker("redis", health.breaker_failures, health.breaker_reset_seconds)
        self._thread: threading.Thread | None = None
        self._ended_with: BaseException | None = None

    # --- what the fleet uses ------------------------------------------------------------

    def start(self, *, once: bool = False) -> None:
        """Run in a thread of its own; how it ended shows in snapshot().ended_with."""
        label = f"{self.settings.imap.user}/{self.settings.imap.mailbox}"
        self._thread = threading.Thread(target=self._run_catching, args=(once,), name=f"mailbox {label}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the write in hand, then end (soon after: between batches, or while idling)."""
        self.stop_event.set()

    def abort(self) -> None:
        """Stop and cut the IMAP connection: for a shutdown that cannot wait for a slow read.
        What was not written is fetched again by the next owner (the position did not move)."""
        self.stop()
        self.sync.cut_off()
        with contextlib.suppress(Exception):
            # Only the socket: closing imaplib's buffered file would wait for the lock the
            # reading thread holds while blocked, and shutdown(2) wakes that read at once.
            self.session.client.socket().shutdown(socket.SHUT_RDWR)

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> RunnerSnapshot:
        return RunnerSnapshot(running=self.running, connected=self.status.connected,
                              backpressured=self.sync.backpressured, failures_in_row=self.status.failures_in_row,
                              alive=self.liveness.alive(), ended_with=self._ended_with)

    def breakers(self) -> list[CircuitBreaker]:
        return [self.imap_breaker, self.redis_breaker]

    def _run_catching(self, once: bool) -> None:
        try:
            self.run(once=once)
        except BaseException as exc:  # noqa: BLE001 - how it ended is the fleet's to judge
            self._ended_with = exc

    def should_stop(self) -> bool:
        # Called between batches and every second while idling: the loop's pulse.
        self.liveness.tick()
        return self.stop_event.is_set()

    def run(self, once: bool = False) -> None:
        """Until stopped (or one pass with `once`). Raises AuthError when credentials are
        refused, and the last transient error when `once` runs out of attempts."""
        try:
            while not self.should_stop():
                for attempt in self._retrying(once):
                    with attempt:
                        self._cycle(once)
                if once:
                    return
        except TRANSIENT:
            if not self.should_stop():
                raise
        except AuthError as exc:
            self.activity.state("credentials", type(exc).__name__)
            raise
        finally:
            self.session.close()
            log.info("producer stopped")

    def _cycle(self, once: bool) -> None:
        with self._folder_gone_is_transient():
            if not self.status.connected:
                self._connect()
            self.activity.state("syncing")
            result = self.sync.run_pass(self.should_stop)
        self.activity.state("idle")
        self.status.failures_in_row = 0
        if self.status.folder_missing:
            log.info("the followed folder is back", extra={"mailbox": self.settings.imap.mailbox})
        self.status.folder_missing = False
        self.metrics.folder_missing.set(0)
        self.status.emitted += result.emitted
        self.status.uidvalidity_changes += int(result.uidvalidity_changed)
        self.imap_breaker.success()
        self.redis_breaker.success()
        self.status.passes += 1
        self.status.last_pass_ok_at = self._clock()
        if not once and not self.should_stop():
            self._wait_for_mail()

    @contextlib.contextmanager
    def _folder_gone_is_transient(self) -> Iterator[None]:
        """A folder missing before this mailbox was ever followed is a setting to fix; one that
        existed (a pass succeeded, or a position is stored) and is gone now is being deleted,
        renamed or re-created by a client: wait for it (issue 18 §8)."""
        try:
            yield
        except MailboxNotFoundError as exc:
            if self.status.passes == 0 and self.sync.store.load() is None:
                raise
            self.status.folder_missing = True
            self.metrics.folder_missing.set(1)
            raise FolderGoneError(f"the followed folder is missing now: {exc}") from None

    def _connect(self) -> None:
        status = self.session.connect()
        self.status.connected = True
        log.info("IMAP session ready", extra={
            "host": self.settings.imap.host, "mailbox": self.settings.imap.mailbox,
            "uidvalidity": status.uidvalidity, "exists": status.exists,
            "idle": self.session.can_idle, "gmail": self.session.is_gmail})

    def _wait_for_mail(self) -> None:
        poll_s = self.settings.producer.poll_interval_seconds
        if not self.session.can_idle:
            self._sleep(poll_s)
            return
        # The poll interval is the safety net; IDLE is also re-issued before servers drop
        # it (RFC 2177: at least every 29 minutes).
        timeout_s = min(poll_s, self.settings.imap.idle_refresh_seconds)
        if self.session.wait_for_change(timeout_s, self.should_stop):
            log.debug("server announced a change")

    def _retrying(self, once: bool) -> Retrying:
        # A stop ends the retries in --once mode too: a pass cut off by the shutdown is not run again.
        once_stop = stop_after_attempt(ONCE_ATTEMPTS) | stop_when_event_set(self.stop_event)
        stop = once_stop if once else (lambda _state: self.should_stop())
        return Retrying(
            retry=retry_if_exception_type(TRANSIENT),
            wait=_backoff,
            stop=stop,
            sleep=self._sleep,
            before_sleep=self._on_failure,
            reraise=True,
        )

    def status_body(self) -> dict[str, Any]:
        """The producer's part of /status: connection, counters, stored position, breakers."""
        state = self.sync.store.load()
        last_ok = self.status.last_pass_ok_at
        imap = self.settings.imap
        return {
            "component": "producer", "account": imap.user, "mailbox": imap.mailbox,
            "imap_connected": self.status.connected, "idle": self.session.can_idle,
            "counters": {"sync_passes": self.status.passes, "emitted": self.status.emitted,
                         "reconnects": self.status.reconnects,
                         "uidvalidity_changes": self.status.uidvalidity_changes},
            "last_successful_sync": iso_from_epoch_s(last_ok) if last_ok else None,
            "uidvalidity": state.uidvalidity if state else None, "last_uid": state.last_uid if state else None,
            "backpressure": self.sync.backpressured, "folder_missing": self.status.folder_missing,
            "failures_in_row": self.status.failures_in_row,
            "circuit_breakers": {b.name: b.snapshot() for b in (self.imap_breaker, self.redis_breaker)},
            "recent_errors": self.status.errors,
            **self.sync.extra_status(),
        }

    def _sleep(self, seconds: float) -> None:
        """Back off, at least until an open breaker allows a trial, ticking while waiting."""
        deadline = time.monotonic() + max(seconds, self.imap_breaker.wait_s(), self.redis_breaker.wait_s())
        while not self.should_stop() and time.monotonic() < deadline:
            self.stop_event.wait(min(1.0, deadline - time.monotonic()))

    def _on_failure(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.status.connected = False
        self.status.failures_in_row += 1
        self.session.close()
        self.metrics.reconnects.inc()
        self.status.reconnects += 1
        (self.redis_breaker if isinstance(exc, RedisUnavailableError) else self.imap_breaker).failure()
        if isinstance(exc, ImapThrottledError):
            self.metrics.throttled.inc()
        self.activity.state("quota" if isinstance(exc, ImapThrottledError) else "backing off", type(exc).__name__)
        delay = state.next_action.sleep if state.next_action else 0
        self.status.errors = (self.status.errors + [f"{type(exc).__name__}: {exc}"])[-5:]
        log.warning("sync failed; reconnecting after backoff", extra={
            "error": f"{type(exc).__name__}: {exc}", "attempt": state.attempt_number,
            "retry_in_s": round(delay, 2)})


_exponential = wait_exponential_jitter(initial=1, max=60, jitter=1)


def _backoff(state: RetryCallState) -> float:
    """Exponential with full jitter, plus the throttling pause; none before the first
    reconnect after the server closed an idle connection (new mail may be waiting)."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ImapConnectionClosedError) and state.attempt_number == 1:
        return 0.0
    return float(_exponential(state)) + _throttle_pause(state)


def _throttle_pause(state: RetryCallState) -> float:
    """An extra pause after a throttling answer, growing with repeated ones (max 5 min)."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ImapThrottledError):
        return float(min(300, 30 * state.attempt_number))
    return 0.0
