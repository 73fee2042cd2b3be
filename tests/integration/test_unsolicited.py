"""Issue 18 items 16 and 18 against a real Dovecot, through a proxy that plays a Gmail-like
server: untagged data between commands, and [THROTTLED] answers wherever they come."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable

import pytest

from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import producer_cmd
from tests.integration.test_error_classes import session_through
from tests.support.waits import wait_until


class LineRewriter:
    """The proxy's rewrite hook, a whole line at a time: a line split over two reads is held
    back until it is complete, so a rewrite never depends on how TCP cut the stream."""

    def __init__(self, rewrite_line: Callable[[bytes], bytes]) -> None:
        self.rewrite_line = rewrite_line
        self._partial = b""

    def __call__(self, data: bytes) -> bytes:
        lines = (self._partial + data).split(b"\r\n")
        self._partial = lines.pop()
        return b"".join(self.rewrite_line(line + b"\r\n") for line in lines)


TAGGED_OK = re.compile(rb"^[A-Za-z0-9]+ OK ")


def push_exists_after_every_command(count: Callable[[], int]) -> LineRewriter:
    """After each tagged OK, an unsolicited `* n EXISTS` with the folder's real count (RFC
    3501 §7.3.1 allows it at any time; a Gmail-like server sends it)."""
    return LineRewriter(lambda line: line + b"* %d EXISTS\r\n" % count() if TAGGED_OK.match(line) else line)


def test_untagged_exists_between_commands_does_not_break_idle(mailbox, dovecot):
    """`* n EXISTS` pushed after a command's OK is absorbed: the next IDLE starts and ends
    cleanly (no error, no reconnect), a repeated count is no change, and new mail still is one."""
    mailbox.append(sample_message(1))
    messages = [1]
    proxy = TcpProxy(dovecot.port, rewrite=push_exists_after_every_command(lambda: len(messages))).start()
    try:
        session = session_through(proxy, mailbox.name)
        session.connect()
        assert session.fetch([1], ["RFC822.SIZE", "BODY.PEEK[]"])[1].body
        assert session.wait_for_change(0.3, lambda: False) is False
        proxy.last_from_client = b""

        def append_while_idling() -> None:
            assert wait_until(lambda: b"IDLE" in proxy.last_from_client, 30)
            mailbox.append(sample_message(2))
            messages.append(2)
        appender = threading.Thread(target=append_while_idling)
        appender.start()
        assert session.wait_for_change(60, lambda: False) is True
        appender.join(30)
        assert sorted(session.fetch([1, 2], ["RFC822.SIZE"])) == [1, 2]
        session.close()
    finally:
        proxy.stop()
    assert proxy.connections == 1


def test_producer_behind_a_server_that_pushes_exists_never_reconnects(mailbox, producer_env, dovecot, redis_client):
    """A real producer behind the Gmail-like proxy delivers mail that arrives while it idles,
    on its first connection: the pushed EXISTS never costs a failed IDLE and a reconnect."""
    mailbox.append(sample_message(1))
    messages = [1]
    proxy = TcpProxy(dovecot.port, rewrite=push_exists_after_every_command(lambda: len(messages))).start()
    env = {**producer_env, "IMAP_PORT": str(proxy.port), "POLL_INTERVAL_SECONDS": "120"}
    proc = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: redis_client.xlen("email_ingestion_stream") == 1, 60)
        assert wait_until(lambda: b"IDLE" in proxy.last_from_client, 30)
        mailbox.append(sample_message(2))
        messages.append(2)
        assert wait_until(lambda: redis_client.xlen("email_ingestion_stream") == 2, 60)
        assert wait_until(lambda: b"IDLE" in proxy.last_from_client, 30)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        proxy.stop()
    assert proc.returncode == 0, stderr[-2000:]
    assert proxy.connections == 1, stderr[-3000:]
    assert "Unexpected IDLE response" not in stderr


def throttling_session(mailbox, dovecot, rewrite_line: Callable[[bytes], bytes]):
    counted: list[int] = []
    pauses: list[float] = []
    proxy = TcpProxy(dovecot.port, rewrite=LineRewriter(rewrite_line)).start()
    session = session_through(proxy, mailbox.name, on_throttled=lambda: counted.append(1),
                              wait=lambda s: bool(pauses.append(s)))
    return proxy, session, counted, pauses


def test_throttled_answers_to_idle_are_each_counted_and_the_pause_doubles(mailbox, dovecot):
    """`* OK [THROTTLED]` while idling and `OK Success [THROTTLED]` in answer to DONE: two
    answers, two counts, one pause as long as the second asks (10 s), the next one 20 s."""
    def rewrite(line: bytes) -> bytes:
        if line.startswith(b"+ idling"):
            return line + b"* OK [THROTTLED] slow down\r\n"
        return re.sub(rb" OK Idle completed[^\r\n]*", b" OK Success [THROTTLED]", line)
    mailbox.append(sample_message(1))
    proxy, session, counted, pauses = throttling_session(mailbox, dovecot, rewrite)
    try:
        session.connect()
        assert session.wait_for_change(0.5, lambda: False) is False
        session.close()
    finally:
        proxy.stop()
    assert len(counted) == 2 and pauses == [10.0] and session._throttle_pause_s == 20.0  # noqa: SLF001


@pytest.mark.parametrize("answers", [1, 2])
def test_throttled_answers_to_one_command_are_each_counted(mailbox, dovecot, answers):
    """An untagged `* OK [THROTTLED]` and the tagged `OK Success [THROTTLED]` of one FETCH
    count as two and double the pause; the next unthrottled command resets it to 5 s."""
    state = {"fetches": 0}

    def rewrite(line: bytes) -> bytes:
        if b"OK Fetch completed" not in line:
            return line
        state["fetches"] += 1
        if state["fetches"] > 1:
            return line
        extra = b"* OK [THROTTLED] slow down\r\n" if answers == 2 else b""
        return extra + re.sub(rb"OK Fetch completed[^\r\n]*", b"OK Success [THROTTLED]", line)
    mailbox.append(sample_message(1))
    proxy, session, counted, pauses = throttling_session(mailbox, dovecot, rewrite)
    try:
        session.connect()
        assert session.fetch([1], ["RFC822.SIZE", "BODY.PEEK[]"])[1].body
        session.fetch([1], ["RFC822.SIZE", "BODY.PEEK[]"])  # unthrottled: resets
        session.close()
    finally:
        proxy.stop()
    assert len(counted) == answers and pauses == [5.0 * answers]
    assert session._throttle_pause_s == 5.0  # noqa: SLF001
