"""One worker process reading several streams (issue 12): real redis-server, real `python worker.py`.

Streams are told apart by mailbox: a payload on stream `a` comes from mailbox `A`, so its
idempotency key reads `imap:alice@example.com:A:1:<uid>`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import dlq_stream
from email_ingestion.common.settings import load_settings
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_payloads import add_payloads
from email_ingestion.worker.cli import build_workers
from tests.conftest import ROOT
from tests.integration.test_health import get, wait_for
from tests.support.waits import wait_until
from tests.support.worker_env import fast_worker_env

GROUP = "email_processor_group"
# Different hash tags, as on a cluster: no key of one stream shares a slot with the other's.
A, B = "{mail-a}stream", "{mail-b}stream"


@pytest.fixture
def env(redis_server, redis_client, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    return fast_worker_env(redis_server.url, records)


def start_worker(env: dict[str, str], name: str, log: Path, *extra: str,
                 handler: str = "tests.support.handlers:record") -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler", handler,
                                 *extra], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def finish(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> int:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker still running after {timeout_s}s: {log.read_text()[-2000:]}") from None


def handled(env: dict[str, str]) -> list[str]:
    """Every handler call's idempotency key, in the order each process made them."""
    return [key for path in sorted(Path(env["TEST_RECORD_DIR"]).glob("*.txt")) for key in path.read_text().split()]


def mailbox_of(key: str) -> str:
    return key.split(":")[2]


def fill(client: Any, a: int, b: int) -> set[str]:
    """`a` payloads on stream A (mailbox A), `b` on stream B; returns their idempotency keys."""
    keys = set()
    for stream, mailbox, count in ((A, "A", a), (B, "B", b)):
        add_payloads(client, count, stream=stream, mailbox=mailbox)
        keys |= {f"imap:alice@example.com:{mailbox}:1:{i}" for i in range(count)}
    return keys


def nothing_pending(client: Any) -> bool:
    return all(client.xpending(stream, GROUP)["pending"] == 0 for stream in (A, B))


def test_two_streams_each_message_handled_exactly_once(env, redis_client, tmp_path):
    """`--stream a --stream b --burst`: every message of both streams is handled exactly once,
    nothing stays pending on either, and the worker exits 0 once both are drained."""
    keys = fill(redis_client, 400, 300)
    log = tmp_path / "worker.log"
    worker = start_worker(env, "w", log, "--stream", A, "--stream", B, "--burst", "--batch-size", "50")
    assert finish(worker, log, 90) == 0, log.read_text()[-2000:]
    counts = Counter(handled(env))
    assert set(counts) == keys and set(counts.values()) == {1}
    assert nothing_pending(redis_client)


def test_retries_and_dead_letters_stay_on_their_own_stream(env, redis_client, tmp_path):
    """The flaky handler fails some messages once and refuses others for good: each stream's
    retries come back to it, and each stream's refused messages land in that stream's own DLQ."""
    env = {**env, "TEST_RETRY_EVERY": "5", "TEST_DEAD_EVERY": "7", "RETRY_CAP_SECONDS": "0.2"}
    add_payloads(redis_client, 20, stream=A, start=1, mailbox="A")
    add_payloads(redis_client, 20, stream=B, start=101, mailbox="B")
    log = tmp_path / "worker.log"
    worker = start_worker(env, "w", log, "--stream", A, "--stream", B, "--burst",
                          handler="tests.support.ha_handlers:flaky")
    assert finish(worker, log, 90) == 0, log.read_text()[-2000:]
    uids = Counter(int(uid) for uid in handled(env))
    expected = {uid for uid in [*range(1, 21), *range(101, 121)] if uid % 7}
    assert set(uids) == expected and set(uids.values()) == {1}
    for stream, first in ((A, 1), (B, 101)):
        dead = [json.loads(fields[b"payload"])["uid"] for _, fields in
                redis_client.xrange(dlq_stream(stream, "email_ingestion_dlq"))]
        assert sorted(dead) == [uid for uid in range(first, first + 20) if uid % 7 == 0]
    assert nothing_pending(redis_client)


def test_a_backlog_on_one_stream_does_not_starve_another(env, redis_client, tmp_path):
    """Stream A holds 3,000 entries, stream B 10: B's are all handled while most of A's
    backlog still waits (one loop per stream, not one stream after the other)."""
    fill(redis_client, 3000, 10)
    slow = {**env, "TEST_HANDLER_DELAY_S": "0.001"}  # A's backlog takes seconds, B's 10 a few ms
    log = tmp_path / "worker.log"
    worker = start_worker(slow, "w", log, "--stream", A, "--stream", B, "--burst")
    assert finish(worker, log, 120) == 0, log.read_text()[-2000:]
    order = handled(env)
    assert len(order) == 3010
    last_b = max(index for index, key in enumerate(order) if mailbox_of(key) == "B")
    a_before = sum(1 for key in order[:last_b] if mailbox_of(key) == "A")
    assert a_before < 1000, f"B's last message came after {a_before} of A's 3,000"


def test_worker_streams_variable_with_endpoints_and_sigterm(env, redis_client, tmp_path):
    """WORKER_STREAMS=a,b does what the flags do; /ready, /status and /metrics cover both
    streams; SIGTERM stops both loops and the worker exits 0 with nothing pending."""
    keys = fill(redis_client, 30, 20)
    port = free_port()
    log = tmp_path / "worker.log"
    worker = start_worker({**env, "WORKER_STREAMS": f"{A},{B}", "WORKER_METRICS_PORT": str(port)}, "w", log)
    try:
        code, body = wait_for(port, "/status", lambda a: a[0] == 200 and json.loads(a[1])["counters"]["processed"] == 50,
                              timeout_s=60)
        # Checked here: a wait that ran out (a start-up slowed by a loaded machine) would
        # otherwise show up below as a misleading "pending 30 != 0".
        assert code == 200 and json.loads(body)["counters"]["processed"] == 50, body
        status = json.loads(body)
        assert status["streams"] == [A, B] and set(status["per_stream"]) == {A, B}
        assert status["per_stream"][B]["counters"]["processed"] == 20
        assert status["figures"]["pending"] == 0 and status["figures"]["group_exists"]
        assert get(port, "/ready") == (200, json.dumps({"ready": True, "reason": "ok"}))
        assert get(port, "/health")[0] == 200
        metrics = get(port, "/metrics")[1]
        for stream, count in ((A, 30), (B, 20)):
            assert f'email_ingestion_emails_processed_total{{group="{GROUP}",stream="{stream}"}} {count}.0' in metrics
            assert f'email_ingestion_stream_depth{{group="{GROUP}",stream="{stream}"}} {count}.0' in metrics
        assert metrics.count("# TYPE email_ingestion_processing_latency_seconds histogram") == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        assert finish(worker, log, 30) == 0, log.read_text()[-2000:]
    assert set(handled(env)) == keys
    assert redis_client.xpending(A, GROUP)["pending"] == 0


def test_ready_names_the_stream_whose_group_is_missing(redis_server, redis_client, monkeypatch):
    """/ready is 503 while any stream's group is missing, and the reason names that stream."""
    for key, value in {"REDIS_URL": redis_server.url, "WORKER_STREAMS": f"{A},{B}", "WORKER_METRICS_PORT": "0"}.items():
        monkeypatch.setenv(key, value)
    workers = build_workers(load_settings(env_file=None), "w", threading.Event())
    assert [loop.loop.stream for loop in workers.loops] == [A, B]
    redis_client.xgroup_create(A, GROUP, id="0", mkstream=True)
    redis_client.xgroup_create(B, "another-group", id="0", mkstream=True)
    ok, reason = workers.ready()
    assert not ok and reason == f"stream {B}: consumer group {GROUP} does not exist"
    redis_client.xgroup_create(B, GROUP, id="0")
    assert workers.ready() == (True, "ok")


@pytest.mark.slow
def test_sigkilled_worker_on_two_streams_loses_nothing(env, redis_client, tmp_path):
    """A two-stream worker is SIGKILLed with entries in hand on both streams; a second
    two-stream worker reclaims them on each stream once the first's heartbeats expire."""
    keys = fill(redis_client, 300, 300)
    slow = {**env, "TEST_HANDLER_DELAY_S": "0.01"}
    victim_log, rescuer_log = tmp_path / "victim.log", tmp_path / "rescuer.log"
    victim = start_worker(slow, "victim", victim_log, "--stream", A, "--stream", B, "--batch-size", "50")
    assert wait_until(lambda: {"A", "B"} <= set(Counter(map(mailbox_of, handled(env))).keys()) and
                      min(Counter(map(mailbox_of, handled(env))).values()) >= 20, 30)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    for stream in (A, B):
        held = [p for p in redis_client.xpending_range(stream, GROUP, "-", "+", 100) if p["consumer"] == b"victim"]
        assert held, f"the kill must leave entries in hand on {stream} for the test to mean anything"
    time.sleep(1.2)  # the victim's heartbeats (TTL 1 s) expire
    rescuer = start_worker(env, "rescuer", rescuer_log, "--stream", A, "--stream", B, "--burst")
    assert finish(rescuer, rescuer_log, 60) == 0, rescuer_log.read_text()[-2000:]
    assert set(handled(env)) == keys  # at least once: the calls in flight at the kill run again
    assert nothing_pending(redis_client)
    reclaims = [json.loads(line) for line in rescuer_log.read_text().splitlines()
                if '"reclaimed pending messages"' in line]
    assert {line["stream"] for line in reclaims} == {A, B}, "the rescuer took the victim's entries over on each stream"


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_hand_on_every_stream(env, redis_client, tmp_path):
    """SIGTERM while both streams have a batch of slow messages in hand: both batches are
    finished and acknowledged, and the worker exits 0."""
    keys = fill(redis_client, 10, 10)
    log = tmp_path / "worker.log"
    worker = start_worker({**env, "TEST_HANDLER_DELAY_S": "0.2"}, "w", log, "--stream", A, "--stream", B,
                          "--batch-size", "10")
    assert wait_until(lambda: set(map(mailbox_of, handled(env))) == {"A", "B"}, 30)
    worker.send_signal(signal.SIGTERM)
    assert finish(worker, log, 30) == 0, log.read_text()[-2000:]
    assert Counter(handled(env)) == Counter(keys), "both batches in hand were finished, each message once"
    assert nothing_pending(redis_client)
