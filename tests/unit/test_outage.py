"""The handler outage breaker's logic (worker/outage.py), with the clock passed in."""

from __future__ import annotations

import errno
import os

import pytest

from email_ingestion.common.errors import RetryLater
from email_ingestion.worker.describe import ErrorDescription, describe
from email_ingestion.worker.outage import HandlerOutage, cause_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, clock: Clock | None = None) -> HandlerOutage:
    return HandlerOutage(failures=failures, probe_min_s=1.0, probe_max_s=8.0, clock=clock or Clock(),
                         clock_ms=lambda: 1_000)


def disk_full(path: str) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", path)


def test_failures_of_different_messages_with_one_cause_open_it():
    """N different messages failing alike open the breaker; the N-th is an outage failure."""
    outage = breaker()
    assert not outage.failed("a", describe(disk_full("/x/a")))
    assert not outage.failed("b", describe(disk_full("/x/b")))
    assert outage.failed("c", describe(disk_full("/x/c")))
    assert outage.is_open()
    state = outage.state()
    assert state is not None and "No space left" in state.cause and "/x/c" in state.error


def test_one_message_failing_again_and_again_never_opens_it():
    """A poison message is one message: its repeated failures are its own."""
    outage = breaker()
    assert not any(outage.failed("poison", describe(RuntimeError("bad input in message 7"))) for _ in range(10))
    assert not outage.is_open()


def test_a_success_or_another_cause_breaks_the_streak():
    """Only consecutive failures count, and only those sharing a cause."""
    outage = breaker()
    outage.failed("a", describe(disk_full("/a")))
    outage.failed("b", describe(disk_full("/b")))
    outage.succeeded()
    outage.failed("c", describe(disk_full("/c")))
    outage.failed("d", describe(KeyError("subject")))
    outage.failed("e", describe(disk_full("/e")))
    assert not outage.is_open()


def test_probes_back_off_and_a_verdict_closes_it():
    """While open: a probe failing alike doubles the interval up to the maximum; another
    cause is the message's own; a success closes the breaker."""
    clock = Clock()
    outage = breaker(failures=2, clock=clock)
    outage.failed("a", describe(RetryLater("webhook answered HTTP 503")))
    assert outage.failed("b", describe(RetryLater("webhook answered HTTP 503")))
    assert outage.probe_in_s() == 1.0
    intervals = []
    for _ in range(5):
        clock.now += outage.probe_in_s()
        assert outage.failed("p", describe(RetryLater("webhook answered HTTP 503")))
        intervals.append(outage.probe_in_s())
    assert intervals == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert not outage.failed("q", describe(ValueError("odd header")))
    assert outage.probe_in_s() == 1.0 and outage.is_open()
    assert outage.succeeded() and not outage.is_open() and outage.state() is None


@pytest.mark.parametrize(("one", "other"), [
    (RetryLater("webhook answered HTTP 503"), RetryLater("webhook answered HTTP 502")),
    (ConnectionError("connection to db-1:5432 refused"), ConnectionError("connection to db-1:5433 refused")),
    (RuntimeError("timeout after 1234 ms on 'orders'"), RuntimeError("timeout after 99 ms on 'invoices'")),
    (OSError(errno.ENOSPC, "No space left on device", "/a"), OSError(errno.ENOSPC, "No space left on device", "/b")),
    (RuntimeError("request 3f2a1b4c-9d8e-4f7a-b6c5-1a2b3c4d5e6f failed"),
     RuntimeError("request 0b1c2d3e-aaaa-4bbb-8ccc-ddddeeeeffff failed")),
    (RuntimeError("mailbox alice@example.com unavailable (req_8fK2x9)"),
     RuntimeError("mailbox bob@example.org unavailable (req_Zz01)")),
])
def test_causes_ignore_what_varies_between_messages(one, other):
    """Numbers, quoted names and an OSError's file name are left out of the cause."""
    assert cause_of(describe(one)) == cause_of(describe(other))


def test_causes_keep_the_type_and_errno_apart():
    """Another exception type or another errno is another cause."""
    def os_error(code: int) -> ErrorDescription:
        return describe(OSError(code, os.strerror(code)))

    assert cause_of(os_error(errno.ENOSPC)) != cause_of(os_error(errno.EACCES))
    assert cause_of(describe(RetryLater("down"))) != cause_of(describe(RuntimeError("down")))


def test_an_exception_whose_str_fails_still_has_a_cause():
    """An exception whose str() raises still counts toward an outage, by its type."""
    class Broken(Exception):
        def __str__(self) -> str:
            raise ValueError("formatting bug")

    outage = breaker(failures=2)
    outage.failed("a", describe(Broken()))
    assert outage.failed("b", describe(Broken()))
    assert cause_of(describe(Broken())).startswith("Broken: ")


def test_the_error_shown_on_status_is_redacted():
    """/status, /ready and the heartbeat record show the error redacted like a log line."""
    from email_ingestion.common.logging import Redactor

    outage = HandlerOutage(failures=1, probe_min_s=1, probe_max_s=2, redact=Redactor(["hunter22"]).redact)
    outage.failed("a", describe(ConnectionError("cannot reach postgres://app:hunter22@db:5432/mail")))
    state = outage.state()
    assert state is not None and "hunter22" not in state.error and "hunter22" not in state.cause
