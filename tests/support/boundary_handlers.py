"""Handlers that misbehave at the handler boundary the way users' handlers do (issue 19),
loaded by name into real worker processes. Each records every other message like
tests.support.handlers:record, and misbehaves on the message whose uid is TEST_BAD_UID."""

from __future__ import annotations

import os
import re
import signal
import time

from email_ingestion.common.errors import PermanentError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext
from tests.support.handlers import record


def _bad(payload: EmailPayload) -> bool:
    return payload.uid == int(os.environ["TEST_BAD_UID"])


class _Unprintable(Exception):
    """An exception class with a formatting bug: str() raises."""

    def __str__(self) -> str:
        return "%d items" % "many"  # noqa: UP031 - the bug is the point


class _NotText(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class _Evil(str):
    def __getitem__(self, index: object) -> str:
        raise RuntimeError("no")

    def __len__(self) -> int:
        raise RuntimeError("no")


class _EvilText(Exception):
    """str() gives a str whose own methods raise."""

    def __str__(self) -> str:
        return _Evil("evil text")


class _Undecodable(Exception):
    """A message made from bytes that were not UTF-8 (surrogateescape)."""

    def __str__(self) -> str:
        return b"caf\xe9".decode("utf-8", "surrogateescape")


class _UnprintablePermanent(PermanentError):
    def __str__(self) -> str:
        raise RuntimeError("no")

    def __repr__(self) -> str:
        raise RuntimeError("no")


class _Custom(BaseException):
    """Not an Exception at all."""


_RAISED: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit,
    "BaseException": _Custom, "Unprintable": _Unprintable, "NotText": _NotText, "EvilText": _EvilText,
    "Undecodable": _Undecodable,
    "UnprintablePermanent": _UnprintablePermanent,
}


def raises(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Raises TEST_RAISE (a name in _RAISED) on the bad message."""
    if _bad(payload):
        raise _RAISED[os.environ["TEST_RAISE"]](2)
    record(payload, ctx)


def argparse_exit(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Parses the subject as a command line, as a user's handler might: argparse exits 2."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--count", type=int, required=True)
    if _bad(payload):
        parser.parse_args(["--count", "not a number", "--surprise"])
    record(payload, ctx)


def regex(payload: EmailPayload, ctx: HandlerContext) -> None:
    """A catastrophic regular expression on the bad message: C code holding the GIL for
    longer than any test runs."""
    if _bad(payload):
        re.match(r"(a+)+$", "a" * 64 + "!")
    record(payload, ctx)


def sleep_hang(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Sleeps (the GIL free) for ever on the bad message."""
    if _bad(payload):
        while True:
            time.sleep(3600)
    record(payload, ctx)


def kill_self(payload: EmailPayload, ctx: HandlerContext) -> None:
    """SIGKILLs its own process on the bad message (a segfault, the OOM killer)."""
    if _bad(payload):
        os.kill(os.getpid(), signal.SIGKILL)
    record(payload, ctx)


def sleep_hang_on_a(payload: EmailPayload, ctx: HandlerContext) -> None:
    """sleep_hang, on mailbox A's bad message only; records the rest."""
    if payload.mailbox == "A":
        sleep_hang(payload, ctx)
    else:
        record(payload, ctx)
