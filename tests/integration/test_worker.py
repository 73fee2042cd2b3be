"""Worker behaviour on a real redis-server, in process (crash paths are in test_worker_crashes.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

from email_ingestion.common.errors import PermanentError
from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.settings import load_settings
from email_ingestion.common.text import to_text
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from email_ingestion.worker.cli import build_worker
from email_ingestion.worker.recovery import Recovery
from tests.conftest import ROOT

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"


@pytest.fixture
def worker_env(redis_server, redis_client, monkeypatch):
    base = {"REDIS_URL": redis_server.url, "WORKER_BLOCK_TIMEOUT_MS": "200", "WORKER_METRICS_PORT": "0",
            "RETRY_BASE_SECONDS": "0.2", "RETRY_CAP_SECONDS": "0.5", "MAX_RETRIES": "2"}

    def apply(**env: Any) -> Any:
        for key, value in {**base, **env}.items():
            monkeypatch.setenv(key, str(value))
        return load_settings(env_file=None)
    return apply


class Recorder:
    """An in-process handler whose behaviour is scripted per uid."""

    def __init__(self, fail_times: dict[int, int] | None = None, permanent: set[int] | None = None) -> None:
        self.fail_times = fail_times or {}
        self.permanent = permanent or set()
        self.calls: list[tuple[int, int, float]] = []  # (uid, attempt, when)
        self.succeeded: Counter[str] = Counter()

    def __call__(self, payload, ctx) -> None:
        self.calls.append((payload.uid, ctx.attempt, time.monotonic()))
        if payload.uid in self.permanent:
            raise PermanentError("this payload can never work")
        if ctx.attempt <= self.fail_times.get(payload.uid, 0):
            raise RuntimeError(f"transient failure {ctx.attempt}")
        self.succeeded[payload.idempotency_key] += 1


def run_burst(settings, handler, consumer: str = "w1", timeout_s: float = 30):
    stop = threading.Event()
    worker = build_worker(settings, consumer, stop)
    worker.processor.handler = handler
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        worker.run(burst=True)
    finally:
        timer.cancel()
    assert not stop.is_set(), "burst did not finish in time"
    return worker


def test_backlog_before_the_group_existed_is_processed(redis_client, worker_env):
    """Entries added before the group existed are all processed; creating the group again is harmless."""
    add_payloads(redis_client, 25)
    recorder = Recorder()
    worker = run_burst(worker_env(), recorder)
    assert len(recorder.succeeded) == 25 and worker.stats.processed == 25
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    run_burst(worker_env(), recorder)  # the group already exists: created idempotently


def test_same_idempotency_key_is_handled_once(redis_client, worker_env):
    """A repeated idempotency key is handled once and counted as duplicate; its marker expires in 7 days."""
    add_payloads(redis_client, 3)
    add_payloads(redis_client, 3)  # the same three messages again
    recorder = Recorder()
    worker = run_burst(worker_env(), recorder)
    assert set(recorder.succeeded.values()) == {1} and len(recorder.succeeded) == 3
    assert worker.stats.duplicates == 3
    key = StreamKeys(STREAM, GROUP).idempotency(make_payload(0).idempotency_key)
    assert redis_client.get(key) == b"done" and 0 < redis_client.ttl(key) <= 7 * 24 * 3600


def test_two_accounts_same_uid_are_different_messages(redis_client, worker_env):
    """The same UID in two accounts gives two messages, both handled."""
    add_payloads(redis_client, 1, account="alice@example.com")
    add_payloads(redis_client, 1, account="bob@example.com")
    recorder = Recorder()
    run_burst(worker_env(), recorder)
    assert len(recorder.succeeded) == 2


def test_failing_twice_then_succeeding_is_handled_once_without_delaying_others(redis_client, worker_env):
    """Failing twice then succeeding: retried with backoff, handled once, and no other message waits."""
    add_payloads(redis_client, 10)
    recorder = Recorder(fail_times={3: 2})
    worker = run_burst(worker_env(), recorder)
    attempts = [attempt for uid, attempt, _ in recorder.calls if uid == 3]
    assert attempts == [1, 2, 3]
    assert recorder.succeeded[make_payload(3).idempotency_key] == 1
    assert len(recorder.succeeded) == 10
    first_failure = next(when for uid, attempt, when in recorder.calls if uid == 3 and attempt == 1)
    first_retry = next(when for uid, attempt, when in recorder.calls if uid == 3 and attempt == 2)
    others_done = max(when for uid, _, when in recorder.calls if uid != 3)
    # The other nine went through while uid 3 waited out its backoff: none waited for it.
    assert others_done < first_retry and first_failure < others_done
    assert worker.metrics.retries._value.get() == 2
    assert redis_client.zcard(StreamKeys(STREAM, GROUP).retries) == 0


def test_always_failing_goes_to_dlq_with_metadata(redis_client, worker_env):
    """After MAX_RETRIES + 1 failures the DLQ entry has reason, error, attempts, traceback, payload."""
    [entry_id] = add_payloads(redis_client, 1)
    recorder = Recorder(fail_times={0: 99})
    run_burst(worker_env(), recorder)
    assert [attempt for _, attempt, _ in recorder.calls] == [1, 2, 3]  # MAX_RETRIES=2
    [(dlq_id, fields)] = redis_client.xrange(DLQ)
    letter = {k.decode(): v.decode() for k, v in fields.items()}
    assert letter["reason"] == "max_retries" and letter["error_type"] == "RuntimeError"
    assert letter["error_message"] == "transient failure 3" and letter["attempts"] == "3"
    assert letter["original_id"] == entry_id and letter["consumer"] == "w1"
    assert "Traceback" in letter["traceback"] and "RuntimeError" in letter["traceback"]
    assert int(letter["first_failure_ms"]) < int(letter["last_failure_ms"])
    assert json.loads(letter["payload"])["uid"] == 0
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_permanent_error_goes_straight_to_dlq(redis_client, worker_env):
    """A PermanentError sends the message to the DLQ after one attempt, with reason permanent."""
    add_payloads(redis_client, 2)
    recorder = Recorder(permanent={1})
    run_burst(worker_env(), recorder)
    assert [attempt for uid, attempt, _ in recorder.calls if uid == 1] == [1]
    [(_, fields)] = redis_client.xrange(DLQ)
    assert fields[b"reason"] == b"permanent" and fields[b"error_type"] == b"PermanentError"


def test_invalid_payload_goes_to_dlq_as_permanent(redis_client, worker_env):
    """Schema-invalid and non-JSON payloads go to the DLQ as invalid_payload without reaching the handler."""
    redis_client.xadd(STREAM, {"payload": json.dumps({"schema_version": 1, "uid": "not-a-number"})})
    redis_client.xadd(STREAM, {"payload": "{not json"})
    recorder = Recorder()
    run_burst(worker_env(), recorder)
    assert recorder.calls == []
    letters = [f for _, f in redis_client.xrange(DLQ)]
    assert [f[b"reason"] for f in letters] == [b"invalid_payload", b"invalid_payload"]
    assert b"schema validation" in letters[0][b"error_message"]


def test_retry_moves_back_when_due_with_time_passed_in(redis_client, worker_env):
    """Given a retry due in an hour (Redis time), looking an hour ahead moves it; no sleeping."""
    from email_ingestion.worker.retries import RetryRecord, RetrySchedule
    keys = StreamKeys(STREAM, GROUP)
    schedule = RetrySchedule(redis_client, keys=keys)
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    pipe = redis_client.pipeline()
    redis_client.xadd(STREAM, {"payload": "{}"}, id="1-1")
    redis_client.xreadgroup(GROUP, "w", {STREAM: ">"})
    schedule.schedule(pipe, "1-1", RetryRecord("{}", 1, 5, "E", "1-1"), 3_600_000, "k", "lease")
    pipe.execute()
    moved, due_in_ms = schedule.move_due()
    assert moved == 0 and due_in_ms is not None and 3_500_000 < due_in_ms <= 3_600_000
    assert schedule.move_due(ahead_ms=3_600_000) == (1, None)
    [(_, fields)] = redis_client.xrange(STREAM, min="2")
    assert fields[b"attempt"] == b"1" and fields[b"original_id"] == b"1-1"


def test_live_slow_consumer_is_not_robbed_but_a_dead_one_is(redis_client, worker_env):
    """Reclaim takes pending messages only from consumers whose heartbeat has expired."""
    add_payloads(redis_client, 4)
    keys = StreamKeys(STREAM, GROUP)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "live", {STREAM: ">"}, count=2)
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=2)
    redis_client.set(keys.heartbeat("live"), "1", px=60_000)
    rescuer = Recovery(redis_client, keys=keys, consumer="rescuer", claim_min_idle_ms=0, hard_limit_ms=3_600_000,
                       heartbeat_ttl_ms=1000)
    reclaimed = rescuer.reclaim()
    assert len(reclaimed.deliveries) == 2 and all(d.deliveries == 2 for d in reclaimed.deliveries)
    owners = Counter(p["consumer"] for p in redis_client.xpending_range(STREAM, GROUP, "-", "+", 10))
    assert owners == {b"live": 2, b"rescuer": 2}


def test_entries_deleted_while_pending_are_cleaned_up(redis_client, worker_env):
    """Reclaim drops pending entries deleted from the stream and counts them as deleted."""
    ids = add_payloads(redis_client, 3)
    keys = StreamKeys(STREAM, GROUP)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=3)
    redis_client.xdel(STREAM, ids[0])
    rescuer = Recovery(redis_client, keys=keys, consumer="rescuer", claim_min_idle_ms=0, hard_limit_ms=3_600_000,
                       heartbeat_ttl_ms=1000)
    reclaimed = rescuer.reclaim()
    assert len(reclaimed.deliveries) == 2 and reclaimed.deleted == 1
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 2


def test_hard_limit_sweep_takes_even_from_live_consumers(redis_client, worker_env):
    """Messages pending past the hard limit are reclaimed even from a consumer with a live heartbeat."""
    add_payloads(redis_client, 1)
    keys = StreamKeys(STREAM, GROUP)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "wedged", {STREAM: ">"}, count=1)
    redis_client.set(keys.heartbeat("wedged"), "1", px=60_000)
    time.sleep(0.05)
    rescuer = Recovery(redis_client, keys=keys, consumer="rescuer", claim_min_idle_ms=0, hard_limit_ms=10,
                       heartbeat_ttl_ms=1000)
    assert len(rescuer.reclaim().deliveries) == 1


def dlq_cli(redis_url: str, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "email_ingestion.worker.dlq_admin", "--json", "--redis-url", redis_url, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_dlq_list_show_stats_replay_and_purge(redis_server, redis_client, worker_env):
    """dlq_admin lists, shows, counts by reason, replays into the stream at attempt 0, and purges."""
    add_payloads(redis_client, 4)
    recorder = Recorder(permanent={0, 1, 2, 3})
    run_burst(worker_env(), recorder)
    listed = dlq_cli(redis_server.url, "list")
    assert len(listed) == 4 and "payload" not in listed[0]
    shown = dlq_cli(redis_server.url, "show", listed[0]["id"])
    assert json.loads(shown["payload"])["uid"] == 0
    assert dlq_cli(redis_server.url, "stats")["by_reason"] == {"permanent": 4}
    replayed = dlq_cli(redis_server.url, "replay", listed[0]["id"])["replayed"]
    assert [r["dlq_id"] for r in replayed] == [listed[0]["id"]]
    assert redis_client.xlen(DLQ) == 3
    [(_, fields)] = redis_client.xrange(STREAM, min=replayed[0]["stream_id"], max=replayed[0]["stream_id"])
    assert fields[b"attempt"] == b"0" and json.loads(fields[b"payload"])["uid"] == 0
    assert dlq_cli(redis_server.url, "purge", listed[1]["id"])["purged"] == 1
    assert dlq_cli(redis_server.url, "purge", "--older-than", "1h")["purged"] == 0
    assert dlq_cli(redis_server.url, "replay", "--error-type", "PermanentError", "--yes")["replayed"] != []
    assert redis_client.xlen(DLQ) == 0
    run_burst(worker_env(), Recorder())
    assert dlq_cli(redis_server.url, "purge", "--all")["purged"] == 0


def test_dlq_purge_older_than(redis_server, redis_client, worker_env):
    """dlq_admin purge --older-than removes only DLQ entries older than the given age."""
    old_ms = int(time.time() * 1000) - 3 * 86_400_000
    redis_client.xadd(DLQ, {"payload": "{}", "reason": "permanent"}, id=f"{old_ms}-0")
    redis_client.xadd(DLQ, {"payload": "{}", "reason": "permanent"})
    assert dlq_cli(redis_server.url, "purge", "--older-than", "2d", "--yes")["purged"] == 1
    assert redis_client.xlen(DLQ) == 1


def test_the_dead_letter_log_line_names_an_id_email_dlq_finds(redis_server, redis_client, worker_env, caplog):
    """The worker's "moved to the dead-letter queue" line carries the DLQ id and the original
    stream id, and `email-dlq show` finds the letter by either."""
    add_payloads(redis_client, 2)
    with caplog.at_level("ERROR", logger="email_ingestion.worker.processor"):
        run_burst(worker_env(), Recorder(permanent={0, 1}))
    lines = [r for r in caplog.records if r.getMessage() == "message moved to the dead-letter queue"]
    assert len(lines) == 2
    letters = {to_text(entry_id) for entry_id, _ in redis_client.xrange(DLQ)}
    assert {r.dlq_id for r in lines} == letters
    for record in lines:
        assert dlq_cli(redis_server.url, "show", record.dlq_id)["id"] == record.dlq_id
        assert dlq_cli(redis_server.url, "show", record.original_id)["id"] == record.dlq_id
