"""The parent side's backstop (build_site.py) counts one message's CPU from that message's
start: messages that share a UID (two mailboxes in one helper pool; every test that builds
uid 1) must not add up to an overrun. Sizes are calibrated against a build measured in the
same run, so the test means the same on a fast machine and on a slow, loaded one."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from email_ingestion.common.payload import EmailPayload
from email_ingestion.imap.fetched import fetched_message
from email_ingestion.producer import build_site
from email_ingestion.producer.build_site import BACKSTOP_SLACK_S, BuildHelper
from email_ingestion.producer.payloads import PayloadBuilder


def attachments(parts: int) -> bytes:
    """Legitimate mail whose build costs CPU in proportion to `parts`."""
    body = b"".join(b"--b\r\nContent-Type: application/octet-stream; name=f%d\r\n\r\nx\r\n" % i for i in range(parts))
    return b"From: a@b.c\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + body + b"--b--\r\n"


def cpu_of_one_build(raw: bytes) -> float:
    """The reference: CPU seconds one build of `raw` takes in this process, on this machine, now."""
    message = fetched_message(1, {b"BODY[]": raw, b"RFC822.SIZE": len(raw)})
    started = time.process_time()
    PayloadBuilder(account="a@x", mailbox="INBOX").build([message], 7, "ref")
    return max(time.process_time() - started, 0.01)


@pytest.fixture
def helper_for() -> Iterator:
    made: list[BuildHelper] = []

    def make(budget_s: float) -> BuildHelper:
        made.append(BuildHelper(log_level="WARNING", log_format="text", secrets=[], budget_s=budget_s))
        return made[-1]
    yield make
    for helper in made:
        helper.close()


def test_messages_sharing_a_uid_do_not_add_up_to_an_overrun(helper_for, monkeypatch):
    """Many cheap messages, all uid 1, one per build call on one helper, each well within its
    budget: together they use more CPU than the backstop allows one message, and none of them
    may be ended for it (the backstop once kept the first one's CPU reading as the baseline)."""
    monkeypatch.setattr(build_site, "POLL_S", 0.005)  # the backstop looks during every message
    raw = attachments(4000)
    one_s = cpu_of_one_build(raw)
    budget_s = 5 * one_s  # room for one build to vary; far below what all of them use together
    rounds = math.ceil(1.5 * (2 * budget_s + BACKSTOP_SLACK_S) / one_s) + 1
    helper, payloads = helper_for(budget_s), PayloadBuilder(account="a@x", mailbox="INBOX")
    message = fetched_message(1, {b"BODY[]": raw, b"RFC822.SIZE": len(raw)})
    errors = []
    for _ in range(rounds):
        (emission,) = helper.build(payloads, [message], 7, "p")
        errors.append(EmailPayload.from_json(emission.payload).parse_error)
    assert errors == [None] * rounds and helper.restarts == 0, (one_s, budget_s, rounds, errors)
