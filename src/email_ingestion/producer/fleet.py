"""One producer process, many mailboxes: a thread per owned mailbox, and the ownership round.

Each mailbox runs its own ProducerRunner (IMAP connection, state, backoff, breakers, IDLE)
in its own thread, so one mailbox failing, throttled or slow never stalls another. The
fleet's own loop runs every third of PRODUCER_LEASE_MS: register this producer, renew the
leases of the mailboxes it follows, stop any whose lease was lost, take unowned mailboxes
up to its fair share and give back what is above it (ownership.py).

A mailbox stopped by a permanent error (credentials refused, folder missing) keeps its lease
so that no other producer hits the same wall, shows as failed in /status and the
`producer_mailbox_failed` gauge, and is tried again every FAILED_RETRY_S. With no
MAILBOXES_FILE (one mailbox from the IMAP_ settings) such an error ends the process as it
always did (exit 2 or 3), for systemd and the operator to see.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.errors import (
    AuthError,
    CredentialsRejectedError,
    LeaseLostError,
    RedisUnavailableError,
    SettingsError,
)
from email_ingestion.monitoring.health import Liveness
from email_ingestion.producer.mailboxes import Mailbox
from email_ingestion.producer.ownership import Ownership, fair_share
from email_ingestion.producer.runner import ProducerRunner

log = logging.getLogger(__name__)

FAILED_RETRY_S = 300.0  # a mailbox stopped by a permanent error is tried again this often
UNEXPECTED_RETRY_S = 60.0  # after an error nobody anticipated (a bug): log it, try again
STOP_JOIN_S = 30.0  # at shutdown: time for every mailbox to finish the batch in hand

MakeRunner = Callable[[Mailbox, str, threading.Event], ProducerRunner]


@dataclass
class MailboxTask:
    """A mailbox this producer owns: its lease value, its runner and the thread running it."""

    mailbox: Mailbox
    lease: str
    runner: ProducerRunner
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    ended_with: BaseException | None = None
    failed: str | None = None  # why it is stopped by a permanent error
    state: str = "failed"  # when failed: "credentials" after invalid_grant (a person must re-authorise)
    retry_at: float = 0.0  # monotonic

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class ProducerFleet:
    def __init__(self, *, mailboxes: list[Mailbox], ownership: Ownership, make_runner: MakeRunner,
                 stop_event: threading.Event, exit_on_permanent: bool, stall_s: float) -> None:
        self.mailboxes = mailboxes
        self.ownership = ownership
        self.make_runner = make_runner
        self.stop_event = stop_event
        self.exit_on_permanent = exit_on_permanent
        self.tasks: dict[str, MailboxTask] = {}
        self.live_producers: list[str] = []
        self.liveness = Liveness(stall_s)
        self._lock = threading.Lock()  # tasks is read by /status from the health server's threads
        self._fatal: BaseException | None = None
        self._stopping: list[MailboxTask] = []
        self._standby_noted: set[str] = set()
        self.once = False

    def run(self, once: bool = False) -> None:
        """Until stopped. Raises the permanent error of the only mailbox (exit_on_permanent).
        With `once`: one pass over every mailbox no other producer follows, then return
        (raising the first error a mailbox ended with)."""
        self.once = once
        try:
            if once:
                self._run_once()
                return
            while not self.stop_event.is_set():
                self.liveness.tick()
                self._round_or_warn()
                if self._fatal is not None:
                    raise self._fatal
                self.stop_event.wait(self.ownership.renew_interval_s)
        finally:
            self._shutdown()

    def _run_once(self) -> None:
        for mailbox in self.mailboxes:
            self._try_take(mailbox)
        tasks = list(self.tasks.values())
        renew_at = time.monotonic() + self.ownership.renew_interval_s
        while any(t.running for t in tasks):
            self.liveness.tick()
            next(t for t in tasks if t.running).thread.join(0.2)  # type: ignore[union-attr]
            if self.stop_event.is_set():
                for task in tasks:
                    task.stop.set()
            if time.monotonic() >= renew_at:  # a first sync can outlast the lease many times
                renew_at += self.ownership.renew_interval_s
                self._renew_or_warn()
        errors = [t.ended_with for t in tasks if t.ended_with is not None]
        if errors:
            raise errors[0]

    def _renew_or_warn(self) -> None:
        try:
            self._renew()
        except RedisUnavailableError as exc:
            log.warning("lease renewal failed; retrying", extra={"error": str(exc)})

    def _round_or_warn(self) -> None:
        try:
            self._round()
        except RedisUnavailableError as exc:
            # The mailboxes' own writes wait for Redis too; leases not renewed in time are
            # found lost on the first round that gets through, and taken again.
            log.warning("ownership round failed; retrying", extra={"error": str(exc)})

    def _round(self) -> None:
        self.live_producers = self.ownership.register()
        self._reap()
        self._renew()
        self._balance(fair_share(len(self.mailboxes), len(self.live_producers)))
        self._restart_failed()

    def _reap(self) -> None:
        """Threads that ended by themselves: a lost lease, or an error."""
        for task in list(self.tasks.values()):
            if task.thread is None or task.running or task.failed:
                continue
            error = task.ended_with
            if isinstance(error, LeaseLostError):
                log.warning("mailbox lease lost; given up", extra={"mailbox": task.mailbox.label})
                self._forget(task)
                self._check_same_id(task)
            elif isinstance(error, AuthError | SettingsError):
                self._mark_failed(task, error, FAILED_RETRY_S)
            else:  # a bug: the runner retries every transient error itself and returns only when stopped
                error = error or RuntimeError("the mailbox's runner returned without being stopped")
                log.error("mailbox stopped by an unexpected error", exc_info=error,
                          extra={"mailbox": task.mailbox.label})
                self._mark_failed(task, error, UNEXPECTED_RETRY_S)

    def _mark_failed(self, task: MailboxTask, error: BaseException, retry_s: float) -> None:
        if self.exit_on_permanent:
            self._fatal = error
            return
        task.failed = f"{type(error).__name__}: {error}"
        task.state = "credentials" if isinstance(error, CredentialsRejectedError) else "failed"
        task.runner.metrics.credentials.set(int(task.state == "credentials"))
        task.retry_at = time.monotonic() + retry_s
        task.runner.metrics.failed.set(1)
        log.error("mailbox stopped; the others carry on", extra={
            "mailbox": task.mailbox.label, "error": task.failed, "retry_in_s": retry_s})

    def _renew(self) -> None:
        tasks = list(self.tasks.values())
        for task, ours in zip(tasks, self.ownership.renew([(t.mailbox.keys, t.lease) for t in tasks]), strict=True):
            if not ours:
                log.warning("mailbox lease lost (expired or taken over); stopping it",
                            extra={"mailbox": task.mailbox.label})
                self._forget(task)
                self._check_same_id(task)

    def _check_same_id(self, task: MailboxTask) -> None:
        """Taken by a lease under our own id: another live process uses our PRODUCER_ID (a
        hand-run `--once` next to the service, or two services sharing a host name). Stop
        taking such leases back, or the two would fence each other in turn."""
        holder = self.ownership.holder(task.mailbox.keys)
        if self.ownership.is_our_id(holder) and self.ownership.take_back_own:
            self.ownership.take_back_own = False
            log.error("another process runs with this PRODUCER_ID and took a mailbox; give each producer "
                      "its own PRODUCER_ID", extra={"producer_id": self.ownership.producer_id,
                                                    "mailbox": task.mailbox.label})

    def _balance(self, share: int) -> None:
        while len(self.tasks) > share:
            self._give_back(list(self.tasks.values())[-1])
        for mailbox in self._unowned_in_my_order():
            if len(self.tasks) >= share or self.stop_event.is_set():
                return
            self._try_take(mailbox)

    def _try_take(self, mailbox: Mailbox) -> None:
        """Follow `mailbox` if its lease is free (or already ours); otherwise note the standby."""
        lease = self.ownership.acquire(mailbox.keys)
        if lease is None:
            self._note_standby(mailbox)
            return
        stop = threading.Event()
        self._start(MailboxTask(mailbox, lease, self.make_runner(mailbox, lease, stop), stop))

    def _note_standby(self, mailbox: Mailbox) -> None:
        if mailbox.key not in self._standby_noted:
            self._standby_noted.add(mailbox.key)
            log.info("mailbox followed by another producer; standing by",
                     extra={"mailbox": mailbox.label, "holder": self.ownership.holder(mailbox.keys)})

    def _unowned_in_my_order(self) -> list[Mailbox]:
        """Mailboxes not ours, starting at a place that depends on our id: producers starting
        together try different mailboxes first instead of all racing for the first one."""
        free = [m for m in self.mailboxes if m.key not in self.tasks]
        if not free:
            return []
        start = zlib.crc32(self.ownership.producer_id.encode()) % len(free)
        return free[start:] + free[:start]

    def _start(self, task: MailboxTask) -> None:
        key = task.mailbox.key
        self._standby_noted.discard(key)
        task.failed, task.ended_with = None, None
        task.runner.metrics.failed.set(0)
        task.runner.metrics.owned.set(1)
        task.thread = threading.Thread(target=self._follow, args=(task,), name=f"mailbox {task.mailbox.label}",
                                       daemon=True)
        with self._lock:
            self.tasks[key] = task
        log.info("following mailbox", extra={"mailbox": task.mailbox.label, "lease": task.lease})
        task.thread.start()

    def _follow(self, task: MailboxTask) -> None:
        try:
            task.runner.run(once=self.once)
        except LeaseLostError as exc:  # the fence refused a write: this mailbox is someone else's now
            log.warning("write refused: the mailbox's lease is no longer ours; stopping it",
                        extra={"mailbox": task.mailbox.label, "lease": task.lease})
            task.ended_with = exc
        except BaseException as exc:  # noqa: BLE001 - the fleet decides what an ending means
            task.ended_with = exc

    def _restart_failed(self) -> None:
        now = time.monotonic()
        for task in list(self.tasks.values()):
            if task.failed and now >= task.retry_at:
                log.info("retrying a stopped mailbox", extra={"mailbox": task.mailbox.label})
                task.runner = self.make_runner(task.mailbox, task.lease, task.stop)
                self._start(task)

    def _give_back(self, task: MailboxTask) -> None:
        """Above our fair share (another producer joined). The release may come before our
        runner has stopped: its writes are fenced from then on, so nothing is doubled."""
        log.info("giving a mailbox back to balance producers", extra={"mailbox": task.mailbox.label})
        self._forget(task)
        self.ownership.release(task.mailbox.keys, task.lease)

    def _forget(self, task: MailboxTask) -> None:
        task.stop.set()
        task.runner.metrics.owned.set(0)
        task.runner.metrics.failed.set(0)
        with self._lock:
            self.tasks.pop(task.mailbox.key, None)
        self._stopping.append(task)

    def _shutdown(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks + self._stopping:
            task.stop.set()
        deadline = time.monotonic() + STOP_JOIN_S
        for task in tasks + self._stopping:
            if task.thread is not None:
                task.thread.join(max(0.0, deadline - time.monotonic()))
        try:
            for task in tasks:
                self.ownership.release(task.mailbox.keys, task.lease)
            self.ownership.unregister()
        except RedisUnavailableError as exc:
            log.warning("could not give the leases back; they expire by themselves", extra={"error": str(exc)})

    # --- what /health, /ready and /status show -------------------------------------------

    def uptime_s(self) -> float:
        return self.liveness.uptime_s()

    def breakers(self) -> list[tuple[str, str, CircuitBreaker]]:
        with self._lock:
            runners = [(t.mailbox, t.runner) for t in self.tasks.values()]
        return [(m.account, m.name, b) for m, r in runners for b in (r.imap_breaker, r.redis_breaker)]

    def alive(self) -> bool:
        with self._lock:
            runners = [t.runner for t in self.tasks.values() if t.running]
        return self.liveness.alive() and all(r.liveness.alive() for r in runners)

    def not_ready(self) -> list[str]:
        """Why this producer is not ready, per mailbox it owns (empty: ready)."""
        reasons = []
        with self._lock:
            tasks = list(self.tasks.values())
        for task in tasks:
            if task.failed:
                reasons.append(f"{task.mailbox.label}: stopped: {task.failed}")
            elif not task.runner.status.connected:
                reasons.append(f"{task.mailbox.label}: IMAP session not established")
            elif task.runner.sync.backpressured:
                reasons.append(f"{task.mailbox.label}: backpressure: stream full of unacknowledged entries")
        return reasons

    def status_body(self) -> dict[str, Any]:
        with self._lock:
            tasks = dict(self.tasks)
        following = []
        for task in tasks.values():
            body = {**task.runner.status_body(), "stream_name": task.mailbox.stream, "lease": task.lease,
                    "state": task.state if task.failed else "following"}
            if task.failed:
                body["error"] = task.failed
            following.append(body)
        others = [m.label for m in self.mailboxes if m.key not in tasks]
        return {"component": "producer", "producer_id": self.ownership.producer_id,
                "live_producers": self.live_producers, "mailboxes": following, "not_ours": others}
