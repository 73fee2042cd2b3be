"""One producer process, many mailboxes: a runner per owned mailbox, and the ownership round.

Each mailbox runs its own ProducerRunner (IMAP connection, state, backoff, breakers, IDLE)
in its own thread, so one mailbox failing, throttled or slow never stalls another. The
fleet only schedules and owns leases: its loop runs every third of PRODUCER_LEASE_MS,
registers this producer, renews the leases it holds, settles runners that ended, gives back
what it cannot serve or holds above its fair share, and takes unowned mailboxes up to it.

Giving a mailbox back is a hand-over: the runner is stopped, its lease is renewed until it
has finished the write in hand, and only then released, so the next owner starts from the
position that write left (nothing lost, nothing doubled, nothing refused). A shutdown does
the same for every mailbox, within STOP_WAIT_S.

A mailbox this producer cannot serve (credentials refused, a folder missing before it was
ever followed, or CANNOT_SERVE_ATTEMPTS failed attempts in a row) is given back if another
live producer may try it; this producer then stays away from it for AVOID_S (a mark in
Redis). When every live producer has failed it lately, the one holding it keeps it: the
mailbox does not go round. With no MAILBOXES_FILE (one mailbox from the IMAP_ settings) a
permanent error ends the process as it always did (exit 2 or 3), releasing the lease.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
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
from email_ingestion.monitoring.metrics import ProducerFamilies
from email_ingestion.producer.fleet_status import (
    MailboxGauges,
    MailboxTask,
    all_alive,
    mailbox_status,
    not_ready,
)
from email_ingestion.producer.mailboxes import Mailbox
from email_ingestion.producer.ownership import Ownership, fair_share
from email_ingestion.producer.runner import ProducerRunner

log = logging.getLogger(__name__)

FAILED_RETRY_S = 300.0  # a mailbox stopped by a permanent error, that no other producer may try: retried this often
UNEXPECTED_RETRY_S = 60.0  # after an error nobody anticipated (a bug): log it, try again
CANNOT_SERVE_ATTEMPTS = 5  # failed attempts in a row (about 30 s of backoff) before another producer may try
AVOID_S = 300.0  # how long a producer stays away from a mailbox it could not serve
STOP_WAIT_S = 6.0  # at shutdown: time for every mailbox to finish the write in hand (the promise is 10 s,
# and a loaded host needs the rest to cut off, release and exit)

MakeRunner = Callable[[Mailbox, str], ProducerRunner]


class ProducerFleet:
    def __init__(self, *, mailboxes: list[Mailbox], ownership: Ownership, make_runner: MakeRunner,
                 stop_event: threading.Event, exit_on_permanent: bool, stall_s: float,
                 families: ProducerFamilies) -> None:
        self.mailboxes = mailboxes
        self.ownership = ownership
        self.make_runner = make_runner
        self.stop_event = stop_event
        self.exit_on_permanent = exit_on_permanent
        self.gauges = MailboxGauges(families)
        self.tasks: dict[str, MailboxTask] = {}
        self.live_producers: list[str] = []
        self.liveness = Liveness(stall_s)
        self._lock = threading.Lock()  # tasks is read by /status from the health server's threads
        self._fatal: BaseException | None = None
        self._standby_noted: set[str] = set()

    def run(self) -> None:
        """Until stopped. Raises the permanent error of the only mailbox (exit_on_permanent)."""
        try:
            while not self.stop_event.is_set():
                self.liveness.tick()
                self._round_or_warn()
                if self._fatal is not None:
                    raise self._fatal
                self._pause(self.ownership.renew_interval_s)
        finally:
            self._shutdown()

    def _pause(self, seconds: float) -> None:
        """Until the next round; a mailbox being handed over is released as soon as its
        runner has ended, so the producer waiting for it need not wait a round more."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set() and (left := deadline - time.monotonic()) > 0:
            leaving = [t for t in self.tasks.values() if t.handing_over]
            if not leaving:
                self.stop_event.wait(left)
                return
            leaving[0].runner.join(min(0.2, left))
            if not leaving[0].runner.running:
                self._round_or_warn(self._settle)

    def run_once(self) -> None:
        """One pass over every mailbox no other producer follows, then return (raising the
        first error a mailbox ended with)."""
        try:
            for mailbox in self.mailboxes:
                self._try_take(mailbox, once=True)
            tasks = list(self.tasks.values())
            self._wait_for(tasks, deadline=None)
            errors = [t.runner.snapshot().ended_with for t in tasks]
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
        finally:
            self._shutdown()

    # --- the round ------------------------------------------------------------------------

    def _round_or_warn(self, step: Callable[[], None] | None = None) -> None:
        try:
            (step or self._round)()
        except RedisUnavailableError as exc:
            # The mailboxes' own writes wait for Redis too; leases not renewed in time are
            # found lost on the first round that gets through, and taken again.
            log.warning("ownership round failed; retrying", extra={"error": str(exc)})

    def _round(self) -> None:
        self.live_producers = self.ownership.register()
        self._renew()
        self._settle()
        self._give_up_unservable()
        self._balance(fair_share(len(self.mailboxes), len(self.live_producers)))
        self._restart_failed()

    def _renew(self) -> None:
        tasks = list(self.tasks.values())
        for task, ours in zip(tasks, self.ownership.renew([(t.mailbox.keys, t.lease) for t in tasks]), strict=True):
            if not ours:
                log.warning("mailbox lease lost (expired or taken over); stopping it",
                            extra={"mailbox": task.mailbox.label})
                self._lost(task)

    def _lost(self, task: MailboxTask) -> None:
        task.runner.stop()
        self._forget(task)
        if self.ownership.lost(task.mailbox.keys):
            log.error("another process runs with this PRODUCER_ID and took a mailbox; give each producer "
                      "its own PRODUCER_ID", extra={"producer_id": self.ownership.producer_id,
                                                    "mailbox": task.mailbox.label})

    def _settle(self) -> None:
        """Runners that ended: handed over, lease lost, or stopped by an error."""
        for task in list(self.tasks.values()):
            snapshot = task.runner.snapshot()
            if snapshot.running or (task.failed and not task.handing_over):
                continue
            error = snapshot.ended_with
            if task.handing_over:
                self._release(task)
            elif isinstance(error, LeaseLostError):
                log.warning("write refused: the mailbox's lease is no longer ours; given up",
                            extra={"mailbox": task.mailbox.label, "lease": task.lease})
                self._lost(task)
            elif isinstance(error, AuthError | SettingsError):
                self._cannot_serve(task, error, FAILED_RETRY_S)
            else:  # a bug: the runner retries every transient error itself and returns only when stopped
                error = error or RuntimeError("the mailbox's runner returned without being stopped")
                log.error("mailbox stopped by an unexpected error", exc_info=error,
                          extra={"mailbox": task.mailbox.label})
                self._cannot_serve(task, error, UNEXPECTED_RETRY_S)

    def _give_up_unservable(self) -> None:
        """Mailboxes failing here go to another producer as soon as one may try them (one may
        have joined since they failed)."""
        for task in list(self.tasks.values()):
            if task.handing_over:
                continue
            failures = task.runner.snapshot().failures_in_row
            if (task.failed or failures >= CANNOT_SERVE_ATTEMPTS) and self._avoid(task):
                log.warning("mailbox failing here; giving it back for another producer to try", extra={
                    "mailbox": task.mailbox.label, "error": task.failed, "failed_attempts": failures,
                    "stay_away_s": AVOID_S})
                task.offer_after = True
                self._hand_over(task)

    def _cannot_serve(self, task: MailboxTask, error: BaseException, retry_s: float) -> None:
        reason = f"{type(error).__name__}: {error}"
        if self.exit_on_permanent:
            self._fatal = error
        elif self._avoid(task):
            log.error("mailbox stopped; another producer may try it, the others carry on",
                      extra={"mailbox": task.mailbox.label, "error": reason, "stay_away_s": AVOID_S})
            task.offer_after = True
            self._release(task)
        else:
            task.failed, task.retry_at = reason, time.monotonic() + retry_s
            # After invalid_grant a person must re-authorise: its own state, metric and alert.
            task.state = "credentials" if isinstance(error, CredentialsRejectedError) else "failed"
            self.gauges.set(task.mailbox, owned=True, failed=True, credentials=task.state == "credentials")
            log.error("mailbox stopped; the others carry on", extra={
                "mailbox": task.mailbox.label, "error": reason, "retry_in_s": retry_s})

    def _avoid(self, task: MailboxTask) -> bool:
        """Mark us as unable to serve the mailbox; True if another live producer may try it."""
        return self.ownership.avoid(task.mailbox.keys, live=self.live_producers, mark_ms=int(AVOID_S * 1000))

    def _restart_failed(self) -> None:
        now = time.monotonic()
        for task in list(self.tasks.values()):
            if task.failed and now >= task.retry_at:
                log.info("retrying a stopped mailbox", extra={"mailbox": task.mailbox.label})
                runner = self.make_runner(task.mailbox, task.lease)
                self._start(MailboxTask(mailbox=task.mailbox, lease=task.lease, runner=runner, offered=task.offered))

    def _balance(self, share: int) -> None:
        held = [t for t in self.tasks.values() if not (t.handing_over or t.offered)]
        for task in held[share:]:
            log.info("giving a mailbox back to balance producers", extra={"mailbox": task.mailbox.label})
            self._hand_over(task)
        taking = share - len(held)
        for mailbox in self._unowned_in_my_order():
            if taking <= 0 or self.stop_event.is_set():
                break
            taking -= self._try_take(mailbox)
        self._take_offered()

    def _take_offered(self) -> None:
        """Mailboxes another producer gave back because it could not serve them: take them
        above our share, or nobody at its share would."""
        offered = set(self.ownership.offered())
        for mailbox in self.mailboxes:
            if mailbox.key in offered and mailbox.key not in self.tasks and not self.stop_event.is_set():
                if self._try_take(mailbox):
                    self.tasks[mailbox.key].offered = True
                    self.ownership.withdraw(mailbox.key)

    def _unowned_in_my_order(self) -> list[Mailbox]:
        """Mailboxes not ours, starting at a place that depends on our id: producers starting
        together try different mailboxes first instead of all racing for the first one."""
        free = [m for m in self.mailboxes if m.key not in self.tasks]
        if not free:
            return []
        start = zlib.crc32(self.ownership.producer_id.encode()) % len(free)
        return free[start:] + free[:start]

    # --- taking, handing over, releasing ----------------------------------------------------

    def _try_take(self, mailbox: Mailbox, *, once: bool = False) -> bool:
        """Follow `mailbox` if its lease is free (or already ours); otherwise note the standby."""
        lease = self.ownership.acquire(mailbox.keys, live=self.live_producers)
        if lease is None:
            self._note_standby(mailbox)
            return False
        try:
            if self.ownership.adopt(mailbox.keys, mailbox.earlier_keys):
                log.info("mailbox position adopted from an earlier key layout", extra={"mailbox": mailbox.label})
        except RedisUnavailableError:
            self.ownership.release(mailbox.keys, lease)
            raise
        self._start(MailboxTask(mailbox=mailbox, lease=lease, runner=self.make_runner(mailbox, lease)), once=once)
        return True

    def _note_standby(self, mailbox: Mailbox) -> None:
        if mailbox.key not in self._standby_noted:
            self._standby_noted.add(mailbox.key)
            log.info("mailbox followed by another producer; standing by",
                     extra={"mailbox": mailbox.label, "holder": self.ownership.holder(mailbox.keys)})

    def _start(self, task: MailboxTask, *, once: bool = False) -> None:
        self._standby_noted.discard(task.mailbox.key)
        self.gauges.set(task.mailbox, owned=True, failed=False)
        with self._lock:
            self.tasks[task.mailbox.key] = task
        log.info("following mailbox", extra={"mailbox": task.mailbox.label, "lease": task.lease})
        task.runner.start(once=once)

    def _hand_over(self, task: MailboxTask) -> None:
        """Stop the runner; the lease stays ours (renewed) until it has ended, then goes."""
        task.handing_over = True
        task.runner.stop()

    def _release(self, task: MailboxTask) -> None:
        self._forget(task)
        self.ownership.release(task.mailbox.keys, task.lease)
        if task.offer_after:
            self.ownership.offer(task.mailbox.key)

    def _forget(self, task: MailboxTask) -> None:
        self.gauges.set(task.mailbox, owned=False, failed=False)
        with self._lock:
            self.tasks.pop(task.mailbox.key, None)

    # --- shutdown -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop every runner, keep their leases renewed until each has finished the write in
        hand (a write under an expired lease would be refused), then give the leases back.
        Runners still busy after STOP_WAIT_S (a slow read) are cut off: what they had not
        written is fetched again by the next owner."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.runner.stop()
        self._wait_for(tasks, deadline=time.monotonic() + STOP_WAIT_S)
        for task in tasks:
            if task.runner.running:
                log.warning("mailbox still busy at shutdown; cut off", extra={"mailbox": task.mailbox.label})
                task.runner.abort()
        try:
            for task in list(self.tasks.values()):
                self._release(task)
            self.ownership.unregister()
        except RedisUnavailableError as exc:
            log.warning("could not give the leases back; they expire by themselves", extra={"error": str(exc)})

    def _wait_for(self, tasks: list[MailboxTask], deadline: float | None) -> None:
        """Until `tasks`' runners have ended (or `deadline`; with none, a stop), renewing their leases: a first
        sync or the last batch of a shutdown can outlast the lease."""
        renew_at = time.monotonic() + self.ownership.renew_interval_s
        while (running := [t for t in tasks if t.runner.running]) and (deadline is None or time.monotonic() < deadline):
            self.liveness.tick()
            if self.stop_event.is_set():
                for task in running:
                    task.runner.stop()
                if deadline is None:
                    return  # a signal during --once: _shutdown's wait bounds it (a build may never end)
            running[0].runner.join(0.2)
            if time.monotonic() >= renew_at:
                renew_at += self.ownership.renew_interval_s
                self._renew_or_warn()

    def _renew_or_warn(self) -> None:
        try:
            self._renew()
        except RedisUnavailableError as exc:
            log.warning("lease renewal failed; retrying", extra={"error": str(exc)})

    # --- what /health, /ready and /status show -------------------------------------------

    def uptime_s(self) -> float:
        return self.liveness.uptime_s()

    def breakers(self) -> list[tuple[str, str, CircuitBreaker]]:
        return [(t.mailbox.account, t.mailbox.name, b) for t in self._tasks() for b in t.runner.breakers()]

    def alive(self) -> bool:
        return self.liveness.alive() and all_alive(self._tasks())

    def not_ready(self) -> list[str]:
        """Why this producer is not ready, per mailbox it owns (empty: ready)."""
        return not_ready(self._tasks())

    def status_body(self) -> dict[str, Any]:
        return {"component": "producer", "producer_id": self.ownership.producer_id,
                "live_producers": self.live_producers, **mailbox_status(self._tasks(), self.mailboxes)}

    def _tasks(self) -> list[MailboxTask]:
        with self._lock:
            return list(self.tasks.values())
