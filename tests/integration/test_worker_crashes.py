"""Worker crash, stop and race paths with real processes and real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until
from tests.support.worker_env import fast_worker_env

pytestmark = pytest.mark.slow

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"


@pytest.fixture
def env(redis_server, redis_client, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    return fast_worker_env(redis_server.url, records)


def start_worker(env: dict[str, str], name: str, handler: str = "tests.support.handlers:record",
                 *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler", handler, *extra],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def recorded(env: dict[str, str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in Path(env["TEST_RECORD_DIR"]).glob("*.txt"):
        counts.update(path.read_text().split())
    return counts


def orphaned(client, consumer: str) -> bool:
    """`consumer`'s heartbeat (TTL 1 s) is gone and its entries are idle past CLAIM_MIN_IDLE_MS
    (500 ms): a rescuer may take them now (waited for instead of slept for)."""
    if client.exists(StreamKeys(STREAM, GROUP).heartbeat(consumer)):
        return False
    mine = [p for p in client.xpending_range(STREAM, GROUP, "-", "+", 1000) if p["consumer"] == consumer.encode()]
    return all(p["time_since_delivered"] >= 500 for p in mine)


def test_four_workers_ten_thousand_messages_each_exactly_once(env, redis_client):
    """Four workers share 10,000 messages and handle each exactly once, leaving nothing pending."""
    total = 10_000
    for start in range(0, total, 2000):
        add_payloads(redis_client, 2000, start=start)
    # Nobody dies here: a 1 s heartbeat would lapse whenever a worker is descheduled for about
    # 0.7 s (four workers on a loaded 2-core machine), and another would take its batch over.
    live = {**env, "HEARTBEAT_TTL_MS": "15000", "LEASE_MS": "30000"}
    workers = [start_worker(live, f"w{i}", "tests.support.handlers:record", "--burst", "--batch-size", "100")
               for i in range(4)]
    results = [finish(w, 180) for w in workers]
    assert all(code == 0 for code, _ in results), [err[-1000:] for _, err in results]
    counts = recorded(env)
    assert len(counts) == total and set(counts.values()) == {1}
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert len(list(Path(env["TEST_RECORD_DIR"]).glob("*.txt"))) >= 2, "work should spread over workers"


def test_sigkilled_worker_loses_nothing(env, redis_client):
    """A worker is SIGKILLed mid-batch; another reclaims its messages once its heartbeat
    has expired. Every message is handled (at least once; the contract is at-least-once)."""
    total = 300
    add_payloads(redis_client, total)
    slow = {**env, "TEST_HANDLER_DELAY_S": "0.01"}
    victim = start_worker(slow, "victim", "tests.support.handlers:record", "--batch-size", "50")
    assert wait_until(lambda: sum(recorded(env).values()) >= 20, 30)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    pending_on_victim = [p for p in redis_client.xpending_range(STREAM, GROUP, "-", "+", 100)
                         if p["consumer"] == b"victim"]
    assert pending_on_victim, "the kill must leave messages pending for the test to mean anything"
    assert wait_until(lambda: orphaned(redis_client, "victim"), 60)
    rescuer = start_worker(env, "rescuer", "tests.support.handlers:record", "--burst")
    code, err = finish(rescuer, 60)
    assert code == 0, err[-2000:]
    counts = recorded(env)
    assert len(counts) == total
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert "reclaimed pending messages" in err


def test_sigstopped_worker_past_claim_time_causes_no_double_effect(env, redis_client, tmp_path):
    """Worker A stops (SIGSTOP) inside a slow jsonl handler; B reclaims and handles the
    message; A resumes and finishes its handler: the JSONL file holds the message once."""
    jsonl, markers = tmp_path / "out.jsonl", tmp_path / "markers"
    markers.mkdir()
    add_payloads(redis_client, 1)
    slow = {**env, "TEST_JSONL": str(jsonl), "TEST_MARKER_DIR": str(markers), "TEST_HANDLER_DELAY_S": "2"}
    a = start_worker(slow, "a", "tests.support.handlers:slow_jsonl()")
    assert wait_until(lambda: any(markers.iterdir()), 30)
    a.send_signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: orphaned(redis_client, "a"), 60)
        b = start_worker({**slow, "TEST_HANDLER_DELAY_S": "0"}, "b", "tests.support.handlers:slow_jsonl()", "--burst")
        code, err = finish(b, 60)
        assert code == 0, err[-2000:]
    finally:
        a.send_signal(signal.SIGCONT)
    # SIGTERM drains the batch in hand: A finishes its (now stale) handler call before it
    # exits, so no sleep is needed for that call to have happened by the check below.
    a.send_signal(signal.SIGTERM)
    finish(a, 30)
    lines = jsonl.read_text().splitlines()
    assert [json.loads(line)["idempotency_key"] for line in lines] == [make_payload(0).idempotency_key]
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_sigterm_drains_the_batch_in_hand_and_exits_zero(env, redis_client):
    """On SIGTERM a worker finishes the batch in hand, acknowledges it and exits 0."""
    add_payloads(redis_client, 10)
    slow = {**env, "TEST_HANDLER_DELAY_S": "0.3"}
    worker = start_worker(slow, "drainer", "tests.support.handlers:record", "--batch-size", "10")
    assert wait_until(lambda: sum(recorded(env).values()) >= 1, 30)
    worker.send_signal(signal.SIGTERM)
    code, err = finish(worker, 30)
    assert code == 0, err[-2000:]
    assert sum(recorded(env).values()) == 10, "the whole batch in hand was finished"
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_sigterm_timeout_leaves_unfinished_messages_pending(env, redis_client):
    """Past the shutdown timeout a worker exits 0 and leaves unfinished messages pending for others."""
    add_payloads(redis_client, 10)
    slow = {**env, "TEST_HANDLER_DELAY_S": "0.5", "WORKER_SHUTDOWN_TIMEOUT_SECONDS": "0.6"}
    worker = start_worker(slow, "hasty", "tests.support.handlers:record", "--batch-size", "10")
    assert wait_until(lambda: sum(recorded(env).values()) >= 1, 30)
    worker.send_signal(signal.SIGTERM)
    code, _ = finish(worker, 30)
    done = sum(recorded(env).values())
    assert code == 0 and done < 10
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 10 - done


def test_message_that_kills_its_worker_goes_to_dlq_after_max_deliveries(env, redis_client):
    """A message that kills its worker 3 times is dead-lettered as max_deliveries; the rest are handled."""
    add_payloads(redis_client, 5)
    poison = {**env, "TEST_POISON_UID": "2", "MAX_DELIVERIES": "3"}
    exits = []
    for _ in range(6):  # a supervisor restarting the crashed worker (bounded)
        code, _ = finish(start_worker(poison, "victim", "tests.support.handlers:poison", "--burst"), 60)
        exits.append(code)
        if code == 0:
            break
    assert exits[:3] == [-signal.SIGKILL] * 3 and exits[-1] == 0
    [(_, letter)] = redis_client.xrange(DLQ)
    assert letter[b"reason"] == b"max_deliveries" and json.loads(letter[b"payload"])["uid"] == 2
    assert set(recorded(env)) == {make_payload(i).idempotency_key for i in (0, 1, 3, 4)}
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
