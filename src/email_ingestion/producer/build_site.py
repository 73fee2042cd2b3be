"""Where payloads are built: in a helper process, under a per-message CPU budget.

Every message is built in a spawned helper process (build_child.py), for two reasons. The
budget can only be enforced reliably from outside the building code (budget.py says why): a
message that overruns ends the helper, and this side builds its degraded payload and starts
a fresh one. And parsing is CPU work: in a helper it no longer queues on this process's GIL
behind the read-ahead thread's socket reads and the Redis writes.

A producer process has a small pool of helpers shared by all its mailboxes (one for a
single mailbox, cli.FLEET_BUILD_HELPERS for a MAILBOXES_FILE), so memory does not grow with
the number of mailboxes. A helper stays up between passes (an IDLE wake-up pays no process
start) and exits by itself after HELPER_IDLE_EXIT_S without work, or when this process goes
away.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from email_ingestion.common.errors import ParseWorkerError, ShutdownCutOff
from email_ingestion.common.payload import ParseError
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.producer.budget import OVERRUN_EXIT, process_cpu_s
from email_ingestion.producer.build_child import HELPER_IDLE_EXIT_S, NO_MESSAGE, Job, serve
from email_ingestion.producer.fetch import Downloaded
from email_ingestion.producer.payloads import MESSAGE_BUDGET_S, Emission, PayloadBuilder

log = logging.getLogger(__name__)

Built = Callable[[], list[Emission]]
Beat = Callable[[], object]
POLL_S = 0.25  # how often a wait for the helper looks at whether it is still there, or cut off
_BUILD_STAGES = ("parse", "payload", "json")
START_ATTEMPTS = 3  # helpers that may end between messages in a row before the batch fails
BACKSTOP_SLACK_S = 1.0  # CPU beyond a message's budgets before this side ends its helper

__all__ = ["HELPER_IDLE_EXIT_S", "BuildHelper", "BuildPool", "Builder", "HelperBuilder", "builder_factory"]


class Builder(Protocol):
    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Failure:
    """Why the helper ended in the middle of a message: an overrun it reported, or a death."""

    uid: int | None
    stage: str
    type: str
    reason: str


class BuildHelper:
    """This side of one helper process: hands it batches, and when it ends in the middle of
    a message, delivers that message degraded and goes on with a fresh helper."""

    def __init__(self, *, log_level: str, log_format: str, secrets: list[str],
                 budget_s: float = MESSAGE_BUDGET_S) -> None:
        self.budget_s = budget_s
        self._child_args = (log_level, log_format, secrets, budget_s)
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._current: Any = multiprocessing.get_context("spawn").RawValue("q", NO_MESSAGE)  # UID in hand
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._started_before = False
        self._watched: tuple[int, int, float] | None = None  # (helper pid, UID in hand, its CPU s then)
        self._cancelled: threading.Event | None = None  # of the batch in hand: a shutdown stops waiting
        self._cut_lock = threading.Lock()  # interrupt() kills only while that batch is still in hand
        self.restarts = 0  # helpers started after the first: overruns, deaths, idle exits

    def build(self, payloads: PayloadBuilder, messages: Sequence[FetchedMessage], uidvalidity: int,
              pass_id: str, beat: Beat = lambda: None, cancelled: threading.Event | None = None) -> list[Emission]:
        """One Emission per message, in order, for the mailbox of `payloads`; `beat` is
        called as each is done. Raises ShutdownCutOff once `cancelled` is set."""
        with self._lock:
            with self._cut_lock:
                self._cancelled = cancelled
            try:
                return self._build(payloads, messages, uidvalidity, pass_id, beat)
            finally:
                with self._cut_lock:
                    self._cancelled = None

    def _build(self, payloads: PayloadBuilder, messages: Sequence[FetchedMessage], uidvalidity: int,
               pass_id: str, beat: Beat) -> list[Emission]:
        out: list[Emission] = []
        pending = list(messages)
        while pending:
            job = Job("build", payloads.account, payloads.mailbox, tuple(pending), uidvalidity, pass_id)
            got, failure = self._run(job, beat)
            out += got
            del pending[:len(got)]
            if failure is None:
                break
            out.append(self._degraded(payloads, pending.pop(0), failure, uidvalidity, pass_id, beat))
        return out

    def _degraded(self, payloads: PayloadBuilder, message: FetchedMessage, failure: _Failure, uidvalidity: int,
                  pass_id: str, beat: Beat) -> Emission:
        stage = failure.stage if failure.stage in _BUILD_STAGES else "parse"
        error = ParseError.model_validate({"stage": stage, "type": failure.type, "reason": failure.reason})
        log.warning("message build ended its helper process; delivering a degraded payload",
                    extra={"uid": message.uid, "stage": failure.stage, "error_type": failure.type})
        if failure.stage != "salvage":
            job = Job("salvage", payloads.account, payloads.mailbox, (message,), uidvalidity, pass_id, error)
            got, again = self._run(job, beat)
            if got:
                return got[0]
            failure = again or failure
        beat()
        return payloads.bare(message, uidvalidity, pass_id, error, f"headers unreadable: {failure.type}")

    def _run(self, job: Job, beat: Beat) -> tuple[list[Emission], _Failure | None]:
        """Runs one job; what it built, and why the helper ended early if it did. A helper
        that ends with no message in hand (it had just exited for idleness, or was killed
        between messages) blames no message: the rest of the job goes to a fresh one."""
        got: list[Emission] = []
        reasons = []
        for _ in range(START_ATTEMPTS):
            self._stop_if_cut_off()
            conn = self._ensure()
            try:
                conn.send(replace(job, messages=job.messages[len(got):]))
            except OSError:
                pass  # gone already (or ended by interrupt()): its exit status says why, below
            failure = self._receive(conn, got, beat)
            if failure is not None:
                self._stop_if_cut_off()  # ended by interrupt(): no message is to blame
            if len(got) == len(job.messages):
                return got, None  # it ended after the last message: nothing lost
            # Only the next message can have been in hand; a UID read just after the one
            # before it was sent is no blame.
            if failure is None or failure.uid == job.messages[len(got)].uid:
                return got, failure
            reasons.append(failure.reason)
        raise ParseWorkerError(f"the payload builder process keeps ending between messages: {reasons}")

    def _receive(self, conn: multiprocessing.connection.Connection, got: list[Emission],
                 beat: Beat) -> _Failure | None:
        while True:
            try:
                if not conn.poll(POLL_S):
                    self._stop_if_cut_off()
                    overrun = self._backstop()  # a long build: the helper's own watchdog bounds it...
                    if overrun is not None:
                        return overrun
                    continue
                reply = conn.recv()
            except (EOFError, OSError):
                return self._ended(self._current.value)
            # A reply ends the message in hand: the next one's CPU counts from its own start,
            # even under the same UID (mailboxes share helpers; a retried batch).
            self._watched = None
            if reply[0] == "emission":
                got.append(reply[1])
                beat()
            elif reply[0] == "overrun":
                _, uid, stage, used_s = reply
                return self._ended(uid, _Failure(uid, stage, "BudgetExceeded",
                                                       f"used more than {self.budget_s} s of CPU "
                                                       f"({used_s:.1f} s)"))
            else:
                return None

    def _backstop(self) -> _Failure | None:
        """... unless the building thread holds the GIL in one long C call (budget.py): seen
        from here, a helper that has used more CPU on one message than its build and salvage
        budgets together (plus slack) is ended, and the message blamed."""
        process, uid = self._process, self._current.value
        used_s = process_cpu_s(process.pid) if process is not None and uid != NO_MESSAGE else None
        if process is None or used_s is None:
            self._watched = None
            return None
        if self._watched is None or self._watched[:2] != (process.pid, uid):
            self._watched = (process.pid, uid, used_s)  # first seen: counts from here (at most POLL_S late)
            return None
        if used_s - self._watched[2] <= 2 * self.budget_s + BACKSTOP_SLACK_S:
            return None
        process.kill()
        return self._ended(uid, _Failure(uid, "parse", "BudgetExceeded",
                                         f"used more than {self.budget_s} s of CPU in a call its own "
                                         "watchdog could not interrupt"))

    def interrupt(self, cancelled: threading.Event) -> None:
        """From another thread, after `cancelled` was set: ends the helper if it is building
        that batch. Killing it is what frees a build thread blocked in sending the batch to
        a helper that reads nothing (stopped, or stuck in one long call)."""
        # Checked and killed under one lock: a batch that ended in between (its helper then
        # taken by another mailbox's batch) must not lose that batch's message in hand.
        with self._cut_lock:
            process = self._process
            if self._cancelled is cancelled and process is not None:
                process.kill()

    def _stop_if_cut_off(self) -> None:
        """A shutdown stopped waiting for this batch: its helper is ended, not asked to finish
        (an endless build must not hold the process; nothing of the batch is written), and
        nothing is blamed on a message."""
        if self._cancelled is None or not self._cancelled.is_set():
            return
        if self._process is not None:
            self._process.kill()
            self._ended(None)
        self._watched = None
        raise ShutdownCutOff("the shutdown's wait ran out while this batch was being built")

    def _ended(self, uid: int | None, reported: _Failure | None = None) -> _Failure:
        """Reaps the helper; the failure it reported, or one made from its exit status.
        `uid` is the message it had in hand, if any."""
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        process.join()
        if reported is not None:
            return reported
        in_hand = None if uid is None or uid == NO_MESSAGE else uid
        code = process.exitcode
        if code == OVERRUN_EXIT:
            return _Failure(in_hand, "parse", "BudgetExceeded", f"used more than {self.budget_s} s of CPU")
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return _Failure(in_hand, "parse", "BuilderDied", f"the build process ended ({how})")

    def _ensure(self) -> multiprocessing.connection.Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        if self._process is not None:
            self._ended(None)
        if self._started_before:
            self.restarts += 1
        context = multiprocessing.get_context("spawn")  # portable; no fork of a threaded process
        ours, theirs = context.Pipe()
        self._current.value = NO_MESSAGE
        process = context.Process(target=serve, args=(theirs, self._current, *self._child_args),
                                  name="payload-builder", daemon=True)
        process.start()
        theirs.close()  # so the helper's end of the pipe is the only one: EOF reaches us when it ends
        self._process, self._conn, self._started_before = process, ours, True
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop, process, ours)  # a helper never outlives its owner
        return ours

    @property
    def pid(self) -> int | None:
        """The helper's process id while one runs (for tests and operators)."""
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                _stop(self._process, self._conn)
                self._process, self._conn = None, None


def _stop(process: Any, conn: multiprocessing.connection.Connection | None) -> None:
    if conn is not None:
        conn.close()  # the helper sees EOF and exits
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()


class BuildPool:
    """The helpers of one producer process, shared by its mailboxes: at most `size` helper
    processes (each about 60 MB), however many mailboxes the process follows. A batch takes
    whichever helper is free; liveness keeps moving while it waits for one."""

    def __init__(self, *, size: int, log_level: str, log_format: str, secrets: list[str],
                 budget_s: float = MESSAGE_BUDGET_S) -> None:
        self.helpers = [BuildHelper(log_level=log_level, log_format=log_format, secrets=secrets, budget_s=budget_s)
                        for _ in range(size)]
        self._free: queue.Queue[BuildHelper] = queue.Queue()
        for helper in self.helpers:
            self._free.put(helper)

    def build(self, payloads: PayloadBuilder, messages: Sequence[FetchedMessage], uidvalidity: int,
              pass_id: str, beat: Beat = lambda: None, cancelled: threading.Event | None = None) -> list[Emission]:
        while True:
            try:
                helper = self._free.get(timeout=POLL_S)
                break
            except queue.Empty:
                if cancelled is not None and cancelled.is_set():
                    raise ShutdownCutOff("the shutdown's wait ran out before this batch found a helper") from None
                beat()  # the other mailboxes' batches are being built: this process is working
        try:
            return helper.build(payloads, messages, uidvalidity, pass_id, beat, cancelled)
        finally:
            self._free.put(helper)

    def interrupt(self, cancelled: threading.Event) -> None:
        for helper in self.helpers:
            helper.interrupt(cancelled)

    def close(self) -> None:
        for helper in self.helpers:
            helper.close()


class HelperBuilder:
    """One pass's view of the pool (sync.py asks for one per pass). A batch starts building
    as soon as it is downloaded, in a thread of its own that waits on a helper, so a helper
    builds batch N while this process writes N-1 to Redis and the read-ahead thread
    downloads N+1."""

    def __init__(self, *, pool: BuildPool, payloads: PayloadBuilder, beat: Beat) -> None:
        self.pool = pool
        self.payloads = payloads
        self.beat = beat
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payload-build")
        self._cancelled = threading.Event()

    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built:
        future = self._pool.submit(self.pool.build, self.payloads, downloaded.messages, uidvalidity, pass_id,
                                   self.beat, self._cancelled)
        return future.result

    def cancel(self) -> None:
        """The shutdown's wait ran out (runner.abort): the batch being built is dropped, so
        that neither its waiter nor the interpreter's exit (which joins this pool's thread)
        waits for a build that may take minutes or never end."""
        self._cancelled.set()
        self.pool.interrupt(self._cancelled)

    def close(self) -> None:
        # The helpers outlive the pass (each exits by itself when idle); batches submitted
        # but not asked for (a pass stopped early) are dropped before they start.
        self._pool.shutdown(wait=True, cancel_futures=True)


def builder_factory(payloads: PayloadBuilder, *, pool: BuildPool) -> Callable[..., Builder]:
    """Each pass of the mailbox of `payloads` gets a view of the process's helper pool."""
    def make(batches: int, beat: Beat = lambda: None) -> Builder:
        return HelperBuilder(pool=pool, payloads=payloads, beat=beat)
    return make
