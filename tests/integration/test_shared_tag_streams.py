"""Streams that share a cluster hash tag keep apart (issue 19 item 1): real redis-server, real
`python worker.py` processes, one per stream, every message failing its first attempt.

The entries of both streams get the same ids (XADD with explicit ids), so any key that names
the tag but not the stream (retry set, retry store keyed by entry id) collides at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import StreamKeys, dlq_stream, legacy_consumer_base, legacy_dlq_stream
from email_ingestion.sandbox.sample_payloads import make_payload
from tests.conftest import ROOT
from tests.support.waits import finish
from tests.support.worker_env import fast_worker_env

GROUP = "email_processor_group"
COUNT = 30


def fill_same_ids(client: Any, streams: tuple[str, ...], count: int) -> set[str]:
    """`count` payloads on each stream, mailbox = the stream's index, entry ids 1-0, 2-0, ...
    on every stream; returns the idempotency keys."""
    keys = set()
    for index, stream in enumerate(streams):
        for uid in range(count):
            payload = make_payload(uid, mailbox=f"M{index}")
            client.xadd(stream, {"payload": payload.to_json()}, id=f"{uid + 1}-0")
            keys.add(payload.idempotency_key)
    return keys


def run_one_worker_per_stream(env: dict[str, str], streams: tuple[str, ...], tmp: Path) -> dict[str, list[str]]:
    """Burst workers, one per stream, side by side; stream -> keys its worker handled."""
    procs = []
    for index, stream in enumerate(streams):
        records = tmp / f"records-{index}"
        records.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py"), "--consumer", f"w{index}", "--stream", stream,
             "--handler", "tests.support.odd_handlers:fail_first", "--burst"],
            env={**env, "TEST_RECORD_DIR": str(records)}, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    for proc in procs:
        code, err = finish(proc, timeout_s=120)
        assert code == 0, err[-2000:]
    return {stream: [k for f in sorted((tmp / f"records-{i}").glob("*.txt")) for k in f.read_text().split()]
            for i, stream in enumerate(streams)}


@pytest.mark.parametrize("streams", [("{mail}alice", "{mail}bob"), ("{mail}", "mail"), ("alice", "bob")],
                         ids=["same-tag", "tag-and-whole-name", "no-tag"])
def test_streams_sharing_a_tag_lose_nothing_and_stay_apart(streams, redis_server, redis_client, tmp_path):
    """Every message of each stream is handled exactly once, by its own stream's worker, after
    one retry; no retry or dead letter is left, none crossed to the other stream."""
    expected = fill_same_ids(redis_client, streams, COUNT)
    env = {**fast_worker_env(redis_server.url, tmp_path), "MAX_RETRIES": "3", "RETRY_CAP_SECONDS": "0.2"}
    handled = run_one_worker_per_stream(env, streams, tmp_path)
    every = [key for keys in handled.values() for key in keys]
    repeated = {k: n for k, n in Counter(every).items() if n > 1}
    lost = expected - set(every)
    assert (len(lost), repeated) == (0, {}), sorted(lost)[:5]
    for index, stream in enumerate(streams):
        assert {k.split(":")[2] for k in handled[stream]} == {f"M{index}"}, f"{stream} handled another stream's mail"
        keys = StreamKeys.of(stream, GROUP, "email_ingestion_dlq")
        assert redis_client.zcard(keys.retries) == 0
        assert not redis_client.exists(keys.dlq)


def test_retries_under_the_old_shared_names_are_moved_at_start(redis_server, redis_client, tmp_path):
    """A retry and a dead letter left by the previous version under the tag-only names are
    moved to the stream's own keys when a worker starts: the retry is handled, the letter kept."""
    stream = "{mail}alice"
    payload = make_payload(7, mailbox="M0")
    old = legacy_consumer_base(stream, GROUP)
    record = {"payload": payload.to_json(), "attempt": 1, "first_failed_ms": 1, "last_error": "x",
              "original_id": "1-0", "deliveries": 0}
    import json
    redis_client.hset(f"{old}:retry:data", "1-0", json.dumps(record))
    redis_client.zadd(f"{old}:retry:due", {"1-0": 0})
    redis_client.xadd(legacy_dlq_stream(stream, "email_ingestion_dlq"), {"payload": "{}", "reason": "permanent"})
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    handled = run_one_worker_per_stream(fast_worker_env(redis_server.url, tmp_path), (stream,), tmp_path)
    assert handled[stream] == [payload.idempotency_key]
    assert not redis_client.exists(f"{old}:retry:due", f"{old}:retry:data",
                                   legacy_dlq_stream(stream, "email_ingestion_dlq"))
    assert redis_client.xlen(dlq_stream(stream, "email_ingestion_dlq")) == 1


def test_the_upgrade_never_overwrites_and_merges_dead_letters(redis_client):
    """Old retries whose id is already taken under the new name stay where they are (counted);
    old dead letters are appended when the new DLQ already exists; a second run moves nothing."""
    import json

    from email_ingestion.worker.key_migration import migrate
    stream = "{mail}alice"
    keys = StreamKeys.of(stream, GROUP, "email_ingestion_dlq")
    old = legacy_consumer_base(stream, GROUP)
    for entry_id in ("1-0", "2-0", "3-0"):
        redis_client.hset(f"{old}:retry:data", entry_id, json.dumps({"payload": "{}", "original_id": entry_id}))
        redis_client.zadd(f"{old}:retry:due", {entry_id: 5})
    redis_client.hset(keys.retry_payloads, "2-0", "newer")
    redis_client.zadd(keys.retries, {"2-0": 9})
    old_dlq = legacy_dlq_stream(stream, "email_ingestion_dlq")
    redis_client.xadd(old_dlq, {"payload": "{}", "reason": "old"})
    redis_client.xadd(keys.dlq, {"payload": "{}", "reason": "new"})
    result = migrate(redis_client, keys, "email_ingestion_dlq")
    assert (result.retries, result.kept_old, result.dead_letters) == (2, 1, True)
    assert redis_client.hget(keys.retry_payloads, "2-0") == b"newer"  # not overwritten
    assert redis_client.zrange(f"{old}:retry:due", 0, -1) == [b"2-0"]  # kept, not lost
    assert dict(redis_client.zrange(keys.retries, 0, -1, withscores=True)) == {b"1-0": 5, b"2-0": 9, b"3-0": 5}
    assert sorted(f[b"reason"] for _, f in redis_client.xrange(keys.dlq)) == [b"new", b"old"]
    assert not redis_client.exists(old_dlq)
    assert migrate(redis_client, keys, "email_ingestion_dlq").retries == 0


def test_the_upgrade_leaves_the_untagged_namesake_alone(redis_client):
    """The old names of `{mail}x` are the live names of a stream called `mail`: while `mail`
    exists, a `{mail}x` worker's start takes neither its retries nor its DLQ."""
    from email_ingestion.worker.key_migration import migrate
    plain = StreamKeys.of("mail", GROUP, "email_ingestion_dlq")
    redis_client.xadd("mail", {"payload": "{}"})
    redis_client.hset(plain.retry_payloads, "1-0", "{}")
    redis_client.zadd(plain.retries, {"1-0": 5})
    redis_client.xadd(plain.dlq, {"payload": "{}", "reason": "permanent"})
    tagged = StreamKeys.of("{mail}x", GROUP, "email_ingestion_dlq")
    assert migrate(redis_client, tagged, "email_ingestion_dlq").retries == 0
    assert redis_client.zcard(plain.retries) == 1 and redis_client.xlen(plain.dlq) == 1
    assert not redis_client.exists(tagged.retries, tagged.dlq)
