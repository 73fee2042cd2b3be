"""Issue 19, the handler boundary: whatever a handler does (raise anything, fail to describe
its error, hang in C code holding the GIL), its batch-mates are settled once and the
message ends in the DLQ; real redis-server, real `python worker.py`, real handlers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import StreamKeys, dlq_stream
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from email_ingestion.worker.retries import RetrySchedule
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until
from tests.support.worker_env import fast_worker_env

pytestmark = pytest.mark.slow

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys(STREAM, GROUP)
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
# Different hash tags, as on a cluster.
A, B = "{mail-a}stream", "{mail-b}stream"
HANDLERS = "tests.support.boundary_handlers"


@pytest.fixture
def env(redis_server, redis_client, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    return {**fast_worker_env(redis_server.url, records), "TEST_BAD_UID": "2", "MAX_RETRIES": "1",
            "RETRY_CAP_SECONDS": "0.2"}


def start_worker(env: dict[str, str], handler: str, *extra: str, name: str = "w") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler",
                             f"{HANDLERS}:{handler}", "--burst", *extra],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def supervised(env: dict[str, str], handler: str, *extra: str, runs: int = 5) -> tuple[list[int], str]:
    """Restart the burst worker under the same name, as systemd would, until it exits 0."""
    exits, logs = [], ""
    for _ in range(runs):
        code, err = finish(start_worker(env, handler, *extra), 90)
        exits.append(code)
        logs += err
        if code == 0:
            break
    return exits, logs


def recorded(env: dict[str, str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in Path(env["TEST_RECORD_DIR"]).glob("*.txt"):
        counts.update(path.read_text().split())
    return counts


def keys(*uids: int, mailbox: str = "INBOX") -> Counter[str]:
    return Counter(make_payload(uid, mailbox=mailbox).idempotency_key for uid in uids)


def letters(client: Any, dlq: str = DLQ) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(dlq)]


@pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException"])
def test_whatever_a_handler_raises_is_that_messages_outcome(env, redis_client, raised):
    """Item 5: a handler raising a BaseException that is not an Exception fails its message
    (retried, then dead-lettered) with a log line; the worker goes on and exits 0, its
    batch-mates handled once."""
    add_payloads(redis_client, 5)
    exits, logs = supervised({**env, "TEST_RAISE": raised}, "raises")
    assert exits == [0]
    assert "handler failed; retry scheduled" in logs
    [letter] = letters(redis_client)
    assert letter[b"reason"] == b"max_retries" and json.loads(letter[b"payload"])["uid"] == 2
    assert recorded(env) == keys(0, 1, 3, 4)
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_argparse_exiting_in_a_multi_stream_worker_stops_no_stream(env, redis_client):
    """Item 5: argparse's exit(2) inside a handler, with two streams: every stream goes on,
    every other message is handled once, the bad one of each stream is dead-lettered."""
    add_payloads(redis_client, 5, stream=A, mailbox="A")
    add_payloads(redis_client, 5, stream=B, mailbox="B")
    exits, _ = supervised(env, "argparse_exit", "--stream", A, "--stream", B)
    assert exits == [0]
    assert recorded(env) == keys(0, 1, 3, 4, mailbox="A") + keys(0, 1, 3, 4, mailbox="B")
    for stream in (A, B):
        [letter] = letters(redis_client, dlq_stream(stream, "email_ingestion_dlq"))
        assert letter[b"error_type"] == b"SystemExit"
        assert redis_client.xpending(stream, GROUP)["pending"] == 0


@pytest.mark.parametrize(("raised", "reason", "message"), [
    ("Unprintable", b"max_retries", b"<str() of _Unprintable failed>"),
    ("NotText", b"max_retries", b"<str() of _NotText failed>"),
    ("EvilText", b"max_retries", b"evil text"),
    ("Undecodable", b"max_retries", b"caf\\udce9"),
    ("UnprintablePermanent", b"permanent", b"<str() of _UnprintablePermanent failed>"),
])
def test_an_error_that_cannot_be_printed_is_still_an_outcome(env, redis_client, raised, reason, message):
    """Item 6: an exception whose str() raises (or is no string) is described by a note in
    its place; the worker keeps its batch-mates' outcomes and the message reaches the DLQ."""
    add_payloads(redis_client, 5)
    exits, _ = supervised({**env, "TEST_RAISE": raised}, "raises")
    assert exits == [0]
    [letter] = letters(redis_client)
    assert letter[b"reason"] == reason and letter[b"error_type"] == f"_{raised}".encode()
    assert letter[b"error_message"] == message
    assert recorded(env) == keys(0, 1, 3, 4)
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_handler_holding_the_gil_is_killed_and_its_message_dead_lettered(env, redis_client):
    """Item 7: a catastrophic regex (C code holding the GIL) past HANDLER_TIMEOUT_SECONDS:
    the kernel timer ends the worker (SIGALRM) each time, the message reaches the DLQ through
    MAX_DELIVERIES, and its batch-mates (settled after each message here) are handled once."""
    add_payloads(redis_client, 4)
    hung = {**env, "TEST_BAD_UID": "1", "HANDLER_TIMEOUT_SECONDS": "1", "MAX_DELIVERIES": "2",
            "WORKER_SETTLE_MAX_MESSAGES": "1"}
    exits, _ = supervised(hung, "regex")
    assert exits == [-signal.SIGALRM, -signal.SIGALRM, 0]
    [letter] = letters(redis_client)
    assert letter[b"reason"] == b"max_deliveries" and json.loads(letter[b"payload"])["uid"] == 1
    assert recorded(env) == keys(0, 2, 3)
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_timeout_exits_though_replicas_fall_short(env, redis_client):
    """Item 12: with REDIS_WAIT_REPLICAS=1 and no replica, a timed-out call still ends the
    worker (exit 1) with the timeout settled on the primary: the message's retry is scheduled."""
    add_payloads(redis_client, 1)
    short = {**env, "TEST_BAD_UID": "0", "HANDLER_TIMEOUT_SECONDS": "1", "REDIS_WAIT_REPLICAS": "1",
             "REDIS_WAIT_TIMEOUT_MS": "100"}
    code, err = finish(start_worker(short, "sleep_hang"), 60)
    assert code == 1, err[-2000:]
    assert RetrySchedule(redis_client, keys=KEYS).waiting() == 1
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_hung_handler_in_a_multi_stream_worker_says_it_ends_every_stream(env, redis_client):
    """Item 15: a hung call on one stream ends the process, and its log line says every
    stream is affected; after the restart nothing of either stream is lost."""
    add_payloads(redis_client, 3, stream=A, mailbox="A")
    add_payloads(redis_client, 3, stream=B, mailbox="B")
    hung = {**env, "TEST_BAD_UID": "1", "HANDLER_TIMEOUT_SECONDS": "1", "MAX_RETRIES": "0"}
    exits, logs = supervised({**hung, "TEST_ONLY_MAILBOX": "A"}, "sleep_hang_on_a", "--stream", A, "--stream", B)
    assert exits[0] == 1 and exits[-1] == 0
    assert "every stream it reads" in logs
    done = recorded(env)
    assert set(done) == set(keys(0, 2, mailbox="A") + keys(0, 1, 2, mailbox="B"))
    [letter] = letters(redis_client, dlq_stream(A, "email_ingestion_dlq"))
    assert letter[b"reason"] == b"timeout"
    assert not letters(redis_client, dlq_stream(B, "email_ingestion_dlq"))


def test_a_kill_repeats_at_most_the_settle_cadence(env, redis_client):
    """Limits: with WORKER_SETTLE_MAX_MESSAGES=5, a worker killed at the 13th message of a
    batch of 20 repeats only the 2 it handled since its last settlement; the killer is
    dead-lettered through MAX_DELIVERIES, the rest handled once."""
    add_payloads(redis_client, 20)
    killer = {**env, "TEST_BAD_UID": "12", "MAX_DELIVERIES": "2", "WORKER_SETTLE_MAX_MESSAGES": "5",
              "WORKER_SETTLE_INTERVAL_MS": "60000"}
    exits, _ = supervised(killer, "kill_self", "--batch-size", "20")
    assert exits == [-signal.SIGKILL, -signal.SIGKILL, 0]
    assert recorded(env) == keys(*range(20)) - keys(12) + keys(10, 11)
    [letter] = letters(redis_client)
    assert letter[b"reason"] == b"max_deliveries"
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_an_outage_shorter_than_the_heartbeat_repeats_nothing(env, redis_server, redis_client):
    """Limits: worker A, cut off from Redis for 0.5 s (HEARTBEAT_TTL_MS 3 s) in the middle of a
    slow batch while worker B runs and reclaims, keeps its batch: every message handled once."""
    add_payloads(redis_client, 8)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    timing = {**env, "HEARTBEAT_TTL_MS": "3000", "LEASE_MS": "3000", "TEST_HANDLER_DELAY_S": "0.2",
              "WORKER_BLOCK_TIMEOUT_MS": "300"}
    proxy = TcpProxy(redis_server.port).start()
    a = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "a", "--handler",
                          "tests.support.handlers:record", "--batch-size", "8"],
                         env={**timing, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = None
    try:
        assert wait_until(lambda: _pending_on(redis_client, "a") == 8, 30)
        b = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "b", "--handler",
                              "tests.support.handlers:record"], env=timing, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: sum(recorded(env).values()) >= 2, 30)
        port = proxy.port
        proxy.stop()  # every connection of A closed, new ones refused
        threading.Event().wait(0.5)
        proxy = TcpProxy(redis_server.port, listen_port=port).start()
        assert wait_until(lambda: redis_client.xpending(STREAM, GROUP)["pending"] == 0, 60)
    finally:
        for worker in (a, b):
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
        proxy.stop()
    assert recorded(env) == keys(*range(8))


def _pending_on(client: Any, consumer: str) -> int:
    return sum(int(c["pending"]) for c in client.xinfo_consumers(STREAM, GROUP) if c["name"] == consumer.encode())
