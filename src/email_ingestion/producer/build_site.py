"""Where payloads are built: in a helper process, under a per-message CPU budget.

Every message is built in one spawned helper process per mailbox (build_child.py), for two
reasons. The budget can only be enforced reliably from outside the building code (budget.py
says why): a message that overruns ends the helper, and this side builds its degraded
payload and starts a fresh one. And parsing is CPU work: in a helper it no longer queues on
this process's GIL behind the read-ahead thread's socket reads and the Redis writes.

The helper stays up between passes (an IDLE wake-up pays no process start) and exits by
itself after HELPER_IDLE_EXIT_S without work, or when this process goes away.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from email_ingestion.common.errors import ParseWorkerError
from email_ingestion.common.payload import ParseError
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.producer.budget import OVERRUN_EXIT
from email_ingestion.producer.build_child import HELPER_IDLE_EXIT_S, NO_MESSAGE, Job, serve
from email_ingestion.producer.fetch import Downloaded
from email_ingestion.producer.payloads import Emission, PayloadBuilder

log = logging.getLogger(__name__)

Built = Callable[[], list[Emission]]
Beat = Callable[[], object]
POLL_S = 1.0  # how often a wait for the helper looks at whether it is still there
_BUILD_STAGES = ("parse", "payload", "json")
START_ATTEMPTS = 3  # helpers that may end between messages in a row before the batch fails

__all__ = ["HELPER_IDLE_EXIT_S", "BuildHelper", "Builder", "HelperBuilder", "builder_factory"]


class Builder(Protocol):
    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Failure:
    """Why the helper ended in the middle of a message: an overrun it reported, or a death."""

    uid: int | None
    stage: str
    type: str
    reason: str


class BuildHelper:
    """This side of one mailbox's helper process: hands it batches, and when it ends in the
    middle of a message, delivers that message degraded and goes on with a fresh helper."""

    def __init__(self, *, payloads: PayloadBuilder, log_level: str, log_format: str, secrets: list[str]) -> None:
        self.payloads = payloads
        self._child_args = (log_level, log_format, secrets, payloads.account, payloads.mailbox, payloads.budget_s)
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._current: Any = multiprocessing.get_context("spawn").RawValue("q", NO_MESSAGE)  # UID in hand
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._started_before = False
        self.restarts = 0  # helpers started after the first: overruns, deaths, idle exits

    def build(self, messages: Sequence[FetchedMessage], uidvalidity: int, pass_id: str,
              beat: Beat = lambda: None) -> list[Emission]:
        """One Emission per message, in order; `beat` is called as each is done."""
        with self._lock:
            out: list[Emission] = []
            pending = list(messages)
            while pending:
                got, failure = self._run(Job("build", tuple(pending), uidvalidity, pass_id), beat)
                out += got
                del pending[:len(got)]
                if failure is None:
                    break
                out.append(self._degraded(pending.pop(0), failure, uidvalidity, pass_id, beat))
            return out

    def _degraded(self, message: FetchedMessage, failure: _Failure, uidvalidity: int, pass_id: str,
                  beat: Beat) -> Emission:
        stage = failure.stage if failure.stage in _BUILD_STAGES else "parse"
        error = ParseError.model_validate({"stage": stage, "type": failure.type, "reason": failure.reason})
        log.warning("message build ended its helper process; delivering a degraded payload",
                    extra={"uid": message.uid, "stage": failure.stage, "error_type": failure.type})
        if failure.stage != "salvage":
            got, again = self._run(Job("salvage", (message,), uidvalidity, pass_id, error), beat)
            if got:
                return got[0]
            failure = again or failure
        beat()
        return self.payloads.bare(message, uidvalidity, pass_id, error, f"headers unreadable: {failure.type}")

    def _run(self, job: Job, beat: Beat) -> tuple[list[Emission], _Failure | None]:
        """Runs one job; what it built, and why the helper ended early if it did. A helper
        that ends with no message in hand (it had just exited for idleness, or was killed
        between messages) blames no message: the rest of the job goes to a fresh one."""
        got: list[Emission] = []
        reasons = []
        for _ in range(START_ATTEMPTS):
            conn = self._ensure()
            try:
                conn.send(Job(job.kind, job.messages[len(got):], job.uidvalidity, job.pass_id, job.error))
            except OSError:
                pass  # gone already: its exit status says why, below
            failure = self._receive(conn, got, beat)
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
                    continue  # a long build: the helper's own watchdog bounds it
                reply = conn.recv()
            except (EOFError, OSError):
                return self._ended(self._current.value)
            if reply[0] == "emission":
                got.append(reply[1])
                beat()
            elif reply[0] == "overrun":
                _, uid, stage, used_s = reply
                return self._ended(uid, _Failure(uid, stage, "BudgetExceeded",
                                                       f"used more than {self.payloads.budget_s} s of CPU "
                                                       f"({used_s:.1f} s)"))
            else:
                return None

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
            return _Failure(in_hand, "parse", "BudgetExceeded", f"used more than {self.payloads.budget_s} s of CPU")
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


class HelperBuilder:
    """One pass's view of the mailbox's helper (sync.py asks for one per pass). A batch
    starts building as soon as it is downloaded, in a thread of its own that waits on the
    helper, so the helper builds batch N while this process writes N-1 to Redis and the
    read-ahead thread downloads N+1."""

    def __init__(self, *, helper: BuildHelper, beat: Beat) -> None:
        self.helper = helper
        self.beat = beat
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payload-build")

    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built:
        future = self._pool.submit(self.helper.build, downloaded.messages, uidvalidity, pass_id, self.beat)
        return future.result

    def close(self) -> None:
        # The helper outlives the pass (it exits by itself when idle); batches submitted
        # but not asked for (a pass stopped early) are dropped before they start.
        self._pool.shutdown(wait=True, cancel_futures=True)


def builder_factory(payloads: PayloadBuilder, *, log_level: str, log_format: str,
                    secrets: list[str], parallel_parse: bool = True) -> Callable[..., Builder]:
    """One helper for the mailbox; each pass gets a view of it. `parallel_parse` is kept for
    old configurations: the helper is no longer optional (it enforces the budget)."""
    helper = BuildHelper(payloads=payloads, log_level=log_level, log_format=log_format, secrets=secrets)

    def make(batches: int, beat: Beat = lambda: None) -> Builder:
        return HelperBuilder(helper=helper, beat=beat)
    return make
