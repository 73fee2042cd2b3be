"""The helper process that builds payloads (started by build_site.py).

It reads jobs from its pipe, builds each message under the CPU watchdog (budget.py) and
sends every Emission back as soon as it is made, so that when the watchdog ends the process
the parent knows exactly which messages are done and which one overran.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Literal

from email_ingestion.common.logging import Redactor, setup_logging
from email_ingestion.common.payload import ParseError
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.producer.budget import CpuWatchdog
from email_ingestion.producer.payloads import Emission, OnStage, PayloadBuilder

HELPER_IDLE_EXIT_S = 60.0  # a helper with no work for this long exits (the next batch starts another)
NO_MESSAGE = -1


@dataclass(frozen=True)
class Job:
    """Build these messages; or, for "salvage", deliver them degraded with `error`."""

    kind: Literal["build", "salvage"]
    account: str
    mailbox: str
    messages: tuple[FetchedMessage, ...]
    uidvalidity: int
    pass_id: str
    error: ParseError | None = None


def serve(conn: multiprocessing.connection.Connection, current: Any, log_level: str, log_format: str,
          secrets: list[str], budget_s: float) -> None:
    """The helper's main loop: until its pipe closes or it has been idle too long. `current`
    (shared memory) holds the UID being built, NO_MESSAGE between messages: if the helper
    dies, the parent knows whether a message was in hand."""
    # The parent decides when to stop; Ctrl-C in a terminal or systemd's SIGTERM to the
    # whole cgroup must not end the helper mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(log_level, log_format, "producer", Redactor(secrets))
    builders: dict[tuple[str, str], PayloadBuilder] = {}  # one per mailbox this helper has built for
    send_lock = threading.Lock()

    def report(uid: int, stage: str, used_s: float) -> None:
        with send_lock:
            conn.send(("overrun", uid, stage, used_s))

    watchdog = CpuWatchdog(budget_s=budget_s, report=report)
    try:
        while conn.poll(HELPER_IDLE_EXIT_S):
            job: Job = conn.recv()
            key = (job.account, job.mailbox)
            builder = builders.get(key) or builders.setdefault(key, PayloadBuilder(
                account=job.account, mailbox=job.mailbox, budget_s=budget_s))
            for message in job.messages:
                current.value = message.uid
                watchdog.start(message.uid)
                emission = _one(builder, job, message, watchdog.stage)
                watchdog.stop()
                with send_lock:
                    conn.send(("emission", emission))
                current.value = NO_MESSAGE
            with send_lock:
                conn.send(("done",))
    except (EOFError, OSError):
        pass  # the parent went away
    os._exit(0)  # also ends the watchdog thread at once


def _one(builder: PayloadBuilder, job: Job, message: FetchedMessage, on_stage: OnStage) -> Emission:
    if job.kind == "salvage" and job.error is not None:
        return builder.degraded(message, job.uidvalidity, job.pass_id, job.error, on_stage)
    return builder.emission(message, job.uidvalidity, job.pass_id, on_stage)
