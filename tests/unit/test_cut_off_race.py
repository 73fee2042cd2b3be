"""A shutdown's cut-off (BuildHelper.interrupt) must only end the helper while the batch it
cuts off is still in hand: a real helper process, and the one interleaving that matters held
open on purpose (the kill delayed until another mailbox's batch has a message in hand)."""

from __future__ import annotations

import threading
import time
from typing import Any

from email_ingestion.common.payload import EmailPayload
from email_ingestion.imap.fetched import fetched_message
from email_ingestion.producer.build_site import BuildHelper
from email_ingestion.producer.payloads import PayloadBuilder


def attachments(parts: int) -> bytes:
    """Legitimate mail whose build costs CPU in proportion to `parts`."""
    body = b"".join(b"--b\r\nContent-Type: application/octet-stream; name=f%d\r\n\r\nx\r\n" % i for i in range(parts))
    return b"From: a@b.c\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + body + b"--b--\r\n"


class LateKill:
    """The helper's process, whose kill() from the interrupting thread waits (bounded) until
    `ready()` holds: the widest form of the window between interrupt()'s check and its kill."""

    def __init__(self, process: Any, ready: Any, by: threading.Event) -> None:
        self._process, self._ready, self._by = process, ready, by

    def __getattr__(self, name: str) -> Any:
        return getattr(self._process, name)

    def kill(self) -> None:
        if self._by.is_set():
            deadline = time.monotonic() + 10
            while not self._ready() and time.monotonic() < deadline:
                time.sleep(0.001)
        self._process.kill()


def test_a_cut_off_landing_after_its_batch_ended_does_not_blame_the_next_batch():
    """Mailbox X's batch is cut off just as it ends; mailbox Y's batch takes the same helper:
    Y's message is built normally, not delivered degraded for a kill meant for X."""
    helper = BuildHelper(log_level="WARNING", log_format="text", secrets=[], budget_s=60)
    x_box, y_box = PayloadBuilder(account="a@x", mailbox="X"), PayloadBuilder(account="a@x", mailbox="Y")
    small = fetched_message(1, {b"BODY[]": attachments(10), b"RFC822.SIZE": 10})
    slow_raw = attachments(40_000)
    slow = fetched_message(2, {b"BODY[]": slow_raw, b"RFC822.SIZE": len(slow_raw)})
    try:
        helper.build(x_box, [small], 7, "warm")  # the helper process is started
        x_cut, y_cut, interrupting = threading.Event(), threading.Event(), threading.Event()
        helper._process = LateKill(helper._process, lambda: helper._cancelled is y_cut
                                   and helper._current.value == 2, interrupting)
        results: dict[str, Any] = {}
        x = threading.Thread(target=lambda: results.update(x=helper.build(x_box, [slow], 7, "x", cancelled=x_cut)))
        x.start()
        deadline = time.monotonic() + 60
        while helper._cancelled is not x_cut and time.monotonic() < deadline:
            time.sleep(0.001)
        assert helper._cancelled is x_cut, "X's batch is in hand"
        # X's event stays clear: X then sees no cut-off before its last reply and ends normally,
        # as a batch does whose reply lands between cancel()'s set() and its interrupt().
        interrupting.set()
        cut = threading.Thread(target=helper.interrupt, args=(x_cut,))
        cut.start()
        y = threading.Thread(target=lambda: results.update(y=helper.build(y_box, [slow], 7, "y", cancelled=y_cut)))
        y.start()
        for thread in (x, cut, y):
            thread.join(120)
        errors = {k: [EmailPayload.from_json(e.payload).parse_error for e in v] for k, v in results.items()}
        assert errors == {"y": [None]} or errors == {"x": [None], "y": [None]}, errors
    finally:
        helper.close()
