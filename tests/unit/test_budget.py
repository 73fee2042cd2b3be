"""The per-message CPU budget (issue 18): counted on the building thread's CPU clock, enforced
by ending the helper process, never by raising into code; an overrun or a killed helper
always yields the degraded payload, and every other message of the batch is built."""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from email_ingestion.common.payload import EmailPayload
from email_ingestion.imap.fetched import FetchedMessage, fetched_message
from email_ingestion.producer import build_site
from email_ingestion.producer.budget import process_cpu_s, thread_cpu_s
from email_ingestion.producer.build_site import BACKSTOP_SLACK_S, BuildHelper
from email_ingestion.producer.payloads import PayloadBuilder
from tests.support.waits import wait_until


def ok(uid: int) -> bytes:
    return b"From: a@b.c\r\nSubject: m%d\r\n\r\nbody\r\n" % uid


def heavy(parts: int = 40_000) -> bytes:
    """Legitimate but CPU-hungry: about 1.3 s of CPU here for 40,000 parts."""
    body = b"".join(b"--b\r\nContent-Type: application/octet-stream; name=f%d\r\n\r\nx\r\n" % i for i in range(parts))
    return b"From: heavy@example.org\r\nSubject: heavy\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" \
        + body + b"--b--\r\n"


class GilHolder(bytes):
    """A message body whose first look (find) holds the GIL in one C call that never ends in
    practice, as a backtracking regex does: only inside a helper process."""

    def find(self, *args: object) -> int:  # type: ignore[override]
        if multiprocessing.parent_process() is not None:
            re.match(r"(a+)+$", "a" * 40 + "b")  # 2^40 steps inside _sre, never releasing the GIL
        return bytes.find(self, *args)  # type: ignore[arg-type]


@pytest.fixture
def make_helper() -> Iterator:
    made: list[BuildHelper] = []

    def make(budget_s: float) -> BuildHelper:
        made.append(BuildHelper(log_level="WARNING", log_format="text", secrets=[], budget_s=budget_s))
        return made[-1]
    yield make
    for helper in made:
        helper.close()


def build(helper: BuildHelper, raws: list[bytes], beats: list[int] | None = None) -> list[EmailPayload]:
    messages = [fetched_message(uid, {b"BODY[]": raw, b"RFC822.SIZE": len(raw)}) for uid, raw in enumerate(raws, 1)]
    counted = beats if beats is not None else []
    payloads = PayloadBuilder(account="a@x", mailbox="INBOX")
    emissions = helper.build(payloads, messages, 7, "p", beat=lambda: counted.append(1))
    return [EmailPayload.from_json(e.payload) for e in emissions]


def test_overrun_yields_the_degraded_payload_and_spares_the_rest(make_helper, monkeypatch):
    """A message over its CPU budget goes out degraded (BudgetExceeded, headers kept); the
    messages before and after it are built normally, liveness beats once per message, and
    nothing is raised into this process (no gc callback or unraisable hook sees anything)."""
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    collections: list[str] = []
    gc.callbacks.append(lambda phase, _info: collections.append(phase))
    try:
        helper = make_helper(0.2)
        beats: list[int] = []
        first, slow, last = build(helper, [ok(1), heavy(), ok(3)], beats)
        gc.collect()
    finally:
        gc.callbacks.pop()
    assert first.parse_error is None and last.parse_error is None and last.subject == "m3"
    assert slow.parse_error is not None and slow.parse_error.type == "BudgetExceeded"
    assert slow.from_ is not None and slow.from_.address == "heavy@example.org" and slow.subject == "heavy"
    assert [p.uid for p in (first, slow, last)] == [1, 2, 3] and len(beats) == 3
    assert unraisable == [] and collections
    assert helper.restarts == 1


def test_waiting_for_a_cpu_does_not_count(make_helper):
    """A helper stopped in the middle of a message (SIGSTOP: a process waiting for a CPU on a
    loaded host) for longer than the whole budget still delivers it normally: the budget
    counts CPU time, not wall time. The budget is set from what the message costs on this
    machine now (measured first), so a slower machine cannot turn it into an overrun."""
    calibrating = make_helper(600.0)
    build(calibrating, [ok(1)])  # the helper is up: its start-up CPU is not counted below
    pid = calibrating.pid
    assert pid is not None
    before_s = process_cpu_s(pid)
    assert build(calibrating, [heavy(40_000)])[0].parse_error is None
    after_s = process_cpu_s(pid)
    assert before_s is not None and after_s is not None
    budget_s = 3 * (after_s - before_s) + 1.0
    helper = make_helper(budget_s)
    build(helper, [ok(1)])
    pid = helper.pid
    assert pid is not None
    result: list[EmailPayload] = []
    worker = threading.Thread(target=lambda: result.extend(build(helper, [heavy(40_000)])))
    worker.start()
    assert wait_until(lambda: helper._current.value == 1, timeout_s=60, interval_s=0.001)  # noqa: SLF001
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(budget_s + 1.0)  # wall time passes beyond the budget; the stopped helper's CPU clock does not move
    finally:
        os.kill(pid, signal.SIGCONT)
    worker.join(timeout=120)
    assert result[0].parse_error is None and helper.restarts == 0


def test_a_killed_helper_costs_the_message_in_hand_only(make_helper):
    """SIGKILL to the helper while it builds message 2: message 2 is delivered degraded
    (BuilderDied, headers salvaged by a fresh helper), 1 and 3 are built normally."""
    helper = make_helper(60.0)
    build(helper, [ok(1)])
    pid = helper.pid
    result: list[EmailPayload] = []
    worker = threading.Thread(target=lambda: result.extend(build(helper, [ok(1), heavy(80_000), ok(3)])))
    worker.start()
    assert wait_until(lambda: helper._current.value == 2, timeout_s=60, interval_s=0.001)  # noqa: SLF001
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=60)
    first, killed, last = result
    assert first.parse_error is None and last.parse_error is None
    assert killed.parse_error is not None and killed.parse_error.type == "BuilderDied"
    assert "signal 9" in killed.parse_error.reason and killed.subject == "heavy"


def test_a_helper_killed_between_messages_blames_none(make_helper):
    """A helper killed while it waits for work (as after an idle exit) costs no message: the
    batch goes to a fresh helper and every payload is built normally."""
    helper = make_helper(5.0)
    build(helper, [ok(1)])
    pid = helper.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    payloads = build(helper, [ok(1), ok(2)])
    assert [p.parse_error for p in payloads] == [None, None] and helper.restarts == 1


@pytest.mark.skipif(not hasattr(time, "pthread_getcpuclockid"), reason="no per-thread CPU clock here")
def test_thread_cpu_clock_ignores_other_threads():
    """The clock the watchdog reads is the building thread's own: another busy thread does not move it."""
    own = threading.get_ident()
    before = thread_cpu_s(own)
    spinner = threading.Thread(target=lambda: sum(range(3_000_000)))
    spinner.start()
    spinner.join()
    assert thread_cpu_s(own) - before < 0.05


def test_a_pool_builds_for_several_mailboxes_in_its_few_helpers():
    """Two mailboxes through a pool of one helper: the second waits for the first's batch,
    each payload carries its own mailbox, and one helper process serves both."""
    from email_ingestion.producer.build_site import BuildPool
    pool = BuildPool(size=1, log_level="WARNING", log_format="text", secrets=[])
    try:
        beats: list[int] = []
        results: dict[str, list[EmailPayload]] = {}

        def run(mailbox: str, raws: list[bytes]) -> None:
            payloads = PayloadBuilder(account="a@x", mailbox=mailbox)
            messages = [fetched_message(uid, {b"BODY[]": raw}) for uid, raw in enumerate(raws, 1)]
            emissions = pool.build(payloads, messages, 7, "p", beat=lambda: beats.append(1))
            results[mailbox] = [EmailPayload.from_json(e.payload) for e in emissions]
        first = threading.Thread(target=run, args=("A", [heavy(40_000)]))
        first.start()
        assert wait_until(lambda: pool.helpers[0]._current.value == 1, 60, 0.001)  # noqa: SLF001
        run("B", [ok(1), ok(2)])
        first.join(60)
        assert [p.mailbox for p in results["A"]] == ["A"] and [p.mailbox for p in results["B"]] == ["B", "B"]
        assert all(p.parse_error is None for p in results["A"] + results["B"])
        assert len({h.pid for h in pool.helpers}) == 1 and len(beats) >= 3
    finally:
        pool.close()


def test_an_unclosed_tag_of_many_letters_builds_within_its_budget(make_helper):
    """An HTML-only message that is "<" and 40,000 letters (the html_to_text cap) builds
    normally within a 1 s CPU budget: the tag pattern is linear (it was quadratic, 6 s of
    CPU in one GIL-holding regex call that the helper's watchdog cannot interrupt)."""
    html = b"<" + b"a" * 40_000
    raw = b"From: h@example.org\r\nSubject: tag\r\nContent-Type: text/html\r\n\r\n" + html + b"\r\n"
    helper = make_helper(1.0)
    first, built, last = build(helper, [ok(1), raw, ok(3)])
    assert [p.parse_error for p in (first, built, last)] == [None, None, None] and helper.restarts == 0
    assert built.subject == "tag"


def test_a_message_holding_the_gil_is_ended_from_outside(make_helper):
    """A message whose build holds the GIL in one endless C call (the helper's watchdog thread
    cannot run) is ended by this side once its helper's CPU time passes the budgets: that
    message goes out degraded (BudgetExceeded), the ones around it normally; nothing hangs."""
    raw = b"From: g@example.org\r\nSubject: gil\r\n\r\nbody\r\n"
    stuck = FetchedMessage(uid=2, size=len(raw), body=GilHolder(raw))
    around = [fetched_message(uid, {b"BODY[]": ok(uid), b"RFC822.SIZE": len(ok(uid))}) for uid in (1, 3)]
    helper = make_helper(0.5)
    emissions = helper.build(PayloadBuilder(account="a@x", mailbox="INBOX"), [around[0], stuck, around[1]], 7, "p")
    first, ended, last = (EmailPayload.from_json(e.payload) for e in emissions)
    assert first.parse_error is None and last.parse_error is None and last.subject == "m3"
    assert ended.uid == 2 and ended.parse_error is not None and ended.parse_error.type == "BudgetExceeded"


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


def test_messages_sharing_a_uid_do_not_add_up_to_an_overrun(make_helper, monkeypatch):
    """The parent's backstop counts one message's CPU from that message's start: many cheap
    messages, all uid 1 (as two mailboxes sharing a helper pool send), one per build call on one
    helper, each well within its budget, together use more CPU than the backstop allows one
    message, and none of them may be ended for it (the backstop once kept the first one's CPU
    reading as the baseline). Sizes are calibrated against a build measured in this run."""
    monkeypatch.setattr(build_site, "POLL_S", 0.005)  # the backstop looks during every message
    raw = attachments(4000)
    one_s = cpu_of_one_build(raw)
    budget_s = 5 * one_s  # room for one build to vary; far below what all of them use together
    rounds = math.ceil(1.5 * (2 * budget_s + BACKSTOP_SLACK_S) / one_s) + 1
    helper, payloads = make_helper(budget_s), PayloadBuilder(account="a@x", mailbox="INBOX")
    message = fetched_message(1, {b"BODY[]": raw, b"RFC822.SIZE": len(raw)})
    errors = []
    for _ in range(rounds):
        (emission,) = helper.build(payloads, [message], 7, "p")
        errors.append(EmailPayload.from_json(emission.payload).parse_error)
    assert errors == [None] * rounds and helper.restarts == 0, (one_s, budget_s, rounds, errors)
