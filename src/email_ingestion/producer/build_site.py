"""Where payloads are built: inline, or in a helper process during long syncs.

Parsing is CPU work and the read-ahead thread's socket reads are too; in one process they
queue on the GIL. For passes of several batches a single spawned process builds payloads
while this process downloads the next batch and writes the previous one to Redis. Short
incremental passes (the usual IDLE wake-up) build inline: a process start would cost more
than it saves.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from email_ingestion.common.errors import ParseWorkerError
from email_ingestion.common.logging import Redactor, setup_logging
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.producer.fetch import Downloaded
from email_ingestion.producer.payloads import Emission, PayloadBuilder

Built = Callable[[], list[Emission]]
PARALLEL_FROM_BATCHES = 3


class Builder(Protocol):
    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built: ...

    def close(self) -> None: ...


class InlineBuilder:
    def __init__(self, *, payloads: PayloadBuilder) -> None:
        self.payloads = payloads

    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built:
        return lambda: self.payloads.build(downloaded.messages, uidvalidity, pass_id)

    def close(self) -> None:
        pass


class ProcessBuilder:
    """Builds in one spawned child (portable; no fork of a threaded process)."""

    def __init__(self, *, payloads: PayloadBuilder, log_level: str, log_format: str, secrets: list[str]) -> None:
        context = (payloads.account, payloads.mailbox, payloads.budget_s)
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_child, initargs=(log_level, log_format, secrets, context))

    def submit(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> Built:
        future = self._pool.submit(_build_in_child, downloaded.messages, uidvalidity, pass_id)

        def result() -> list[Emission]:
            try:
                return future.result()
            except BrokenProcessPool as exc:
                raise ParseWorkerError(f"payload builder process died: {exc}") from exc
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def builder_factory(payloads: PayloadBuilder, *, parallel_parse: bool, log_level: str, log_format: str,
                    secrets: list[str]) -> Callable[[int], Builder]:
    """Chooses per pass: a helper process for long syncs when PARALLEL_PARSE allows it."""
    def make(batches: int) -> Builder:
        if parallel_parse and batches >= PARALLEL_FROM_BATCHES:
            return ProcessBuilder(payloads=payloads, log_level=log_level, log_format=log_format, secrets=secrets)
        return InlineBuilder(payloads=payloads)
    return make


# The child's one PayloadBuilder (and so one budget watchdog thread), made by _init_child.
_child_builder: list[PayloadBuilder] = []


def _init_child(log_level: str, log_format: str, secrets: list[str], context: tuple[str, str, float]) -> None:
    # The parent decides when to stop and then shuts the pool down; Ctrl-C in a terminal
    # or systemd's SIGTERM to the whole cgroup must not kill the child mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(log_level, log_format, "producer", Redactor(secrets))
    account, mailbox, budget_s = context
    _child_builder.append(PayloadBuilder(account=account, mailbox=mailbox, budget_s=budget_s))
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    """A parent killed outright (SIGKILL, OOM) cannot shut the pool down, and the child never
    sees EOF on its queue (it holds both ends of the pipe): follow the parent instead."""
    parent.join()
    os._exit(0)


def _build_in_child(messages: tuple[FetchedMessage, ...], uidvalidity: int, pass_id: str) -> list[Emission]:
    return _child_builder[0].build(messages, uidvalidity, pass_id)

