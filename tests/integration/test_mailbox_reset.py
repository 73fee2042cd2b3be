"""`email-ingest mailbox reset`: re-ingest a mailbox with a real producer and real workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import ROOT, USER, producer_cmd
from tests.support.waits import wait_until

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"


def ingest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "email_ingestion", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def handled(env: dict[str, str], record_dir) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "r1", "--burst", "--handler",
                           "tests.support.handlers:record"],
                          env={**env, "TEST_RECORD_DIR": str(record_dir), "WORKER_BLOCK_TIMEOUT_MS": "200",
                               "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for f in sorted(record_dir.iterdir()) for line in f.read_text().splitlines()]


def test_reset_re_emits_without_repeating_effects_unless_asked(tmp_path, mailbox, producer_env, redis_client):
    """A reset re-emits the messages above the UID; workers count them as duplicates; with
    --forget-done the handler sees them again. Without --yes nothing changes."""
    mailbox.append(*(sample_message(i) for i in (1, 2, 3)))
    env = {k: v for k, v in producer_env.items()}
    records = tmp_path / "records"
    records.mkdir()
    assert subprocess.run(producer_cmd("--once"), env=env, capture_output=True, timeout=60).returncode == 0
    assert len(handled(env, records)) == 3
    args = ["mailbox", "reset", "--json", "--account", USER, "--mailbox", mailbox.name, "--uid", "1"]
    assert '"changed": false' in ingest(env, *args).stdout
    done = ingest(env, *args, "--yes")
    assert done.returncode == 0 and '"last_uid": 1' in done.stdout, done.stderr
    assert subprocess.run(producer_cmd("--once"), env=env, capture_output=True, timeout=60).returncode == 0
    assert redis_client.xlen(STREAM) == 5
    assert len(handled(env, records)) == 3  # the two re-emitted ones were duplicates: no second effect
    done = ingest(env, *args, "--yes", "--forget-done")
    assert '"done_markers_deleted": 2' in done.stdout, done.stdout + done.stderr
    assert subprocess.run(producer_cmd("--once"), env=env, capture_output=True, timeout=60).returncode == 0
    keys = handled(env, records)
    assert len(keys) == 5 and sorted(keys[3:]) == sorted(keys[1:3])  # uids 2 and 3 handled once more


def test_reset_refuses_to_move_forward_or_an_unknown_mailbox(mailbox, producer_env, redis_client):
    """Going forward would skip mail; an unknown mailbox has nothing to reset: exit 1, one line."""
    mailbox.append(sample_message(1))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    forward = ingest(producer_env, "mailbox", "reset", "--account", USER, "--mailbox", mailbox.name, "--uid", "9", "--yes")
    assert forward.returncode == 1 and "only goes back" in forward.stderr
    unknown = ingest(producer_env, "mailbox", "reset", "--account", USER, "--mailbox", "nope", "--uid", "0", "--yes")
    assert unknown.returncode == 1 and "no stored position" in unknown.stderr
    lease = StreamKeys(stream=STREAM, group=GROUP).idempotency(f"imap:{USER}:{mailbox.name}:1:1")
    redis_client.set(lease, "lease:w9:1-0")
    ingest(producer_env, "mailbox", "reset", "--account", USER, "--mailbox", mailbox.name, "--uid", "0", "--yes",
           "--forget-done")
    assert redis_client.get(lease) == b"lease:w9:1-0"  # a lease in force is never deleted


def reset_to_zero(env: dict[str, str], mailbox_name: str) -> subprocess.CompletedProcess[str]:
    return ingest(env, "mailbox", "reset", "--account", USER, "--mailbox", mailbox_name, "--uid", "0", "--yes")


def message_ids_after(client, entry_id: bytes) -> Counter[str]:
    return Counter(json.loads(f[b"payload"])["message_id"] for _, f in client.xrange(STREAM, min=b"(" + entry_id))


def test_reset_to_zero_after_a_resync_re_emits_every_message(mailbox, producer_env, redis_client):
    """10 messages, the folder re-created with them and 2 new ones, re-synced (2 emitted);
    `reset --uid 0` then re-emits all 12 once, the copies the re-sync skipped included."""
    mailbox.append(*(sample_message(i) for i in range(10)))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    mailbox.recreate()
    mailbox.append(*(sample_message(i) for i in (*range(10), 50, 51)))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    assert redis_client.xlen(STREAM) == 12
    mark = redis_client.xrevrange(STREAM, count=1)[0][0]
    done = reset_to_zero(producer_env, mailbox.name)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    again = message_ids_after(redis_client, mark)
    assert sorted(again) == sorted(f"<msg-0-{i}@example.org>" for i in (*range(10), 50, 51))
    assert set(again.values()) == {1}


@pytest.mark.slow
def test_reset_during_an_interrupted_resync_re_emits_the_whole_folder_once(mailbox, producer_env, redis_client,
                                                                          dovecot):
    """A re-sync killed midway, then `reset --uid 0`: the next run emits every message of
    the folder exactly once (the part the re-sync had not reached included)."""
    mailbox.append(*(sample_message(i) for i in range(200)))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    mailbox.recreate()
    mailbox.append(*(sample_message(i) for i in (*range(200), 900)))
    proxy = TcpProxy(dovecot.port, delay_s=0.01).start()
    try:
        proc = subprocess.Popen(producer_cmd("--once"), env={**producer_env, "IMAP_PORT": str(proxy.port),
                                                             "BATCH_SIZE": "10", "PRODUCER_LEASE_MS": "1000"},
                                stderr=subprocess.DEVNULL)
        state_key = next(iter(redis_client.scan_iter("*:state")))
        uidvalidity = str(mailbox.uidvalidity()).encode()
        midway = wait_until(lambda: redis_client.hget(state_key, "uidvalidity") == uidvalidity
                            and int(redis_client.hget(state_key, "last_uid")) >= 20, 60, 0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert midway and int(redis_client.hget(state_key, "last_uid")) < 201, "the kill must land mid-re-sync"
    finally:
        proxy.stop()
    assert wait_until(lambda: not list(redis_client.scan_iter("*:lease")), 30)  # the killed producer's lease
    mark = redis_client.xrevrange(STREAM, count=1)[0][0]
    assert reset_to_zero(producer_env, mailbox.name).returncode == 0
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    again = message_ids_after(redis_client, mark)
    assert len(again) == 201 and set(again.values()) == {1}


def test_reset_is_refused_while_a_producer_holds_the_mailbox(mailbox, producer_env, redis_client):
    """A running producer would move the position forward again: the reset says so in one
    line, exits 1 and changes nothing."""
    mailbox.append(*(sample_message(i) for i in range(3)))
    proc = subprocess.Popen(producer_cmd(), env=producer_env, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: redis_client.xlen(STREAM) == 3, 60)
        state_key = next(iter(redis_client.scan_iter("*:state")))
        before = redis_client.hgetall(state_key)
        refused = reset_to_zero(producer_env, mailbox.name)
        assert refused.returncode == 1 and "a producer holds" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert redis_client.hgetall(state_key) == before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_uidvalidity_change_during_a_reset_to_zero_still_re_emits_everything(mailbox, producer_env, redis_client,
                                                                               dovecot):
    """`reset --uid 0` over 200 messages, the producer killed part-way through the replay, then
    the folder re-created with all 200 and one new message: every message is re-emitted after
    the reset (none lost; only those replayed before the change go out twice), the new one once."""
    mailbox.append(*(sample_message(i) for i in range(200)))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    mark = redis_client.xrevrange(STREAM, count=1)[0][0]
    assert reset_to_zero(producer_env, mailbox.name).returncode == 0
    proxy = TcpProxy(dovecot.port, delay_s=0.01).start()
    try:
        proc = subprocess.Popen(producer_cmd("--once"), env={**producer_env, "IMAP_PORT": str(proxy.port),
                                                             "BATCH_SIZE": "10", "PRODUCER_LEASE_MS": "1000"},
                                stderr=subprocess.DEVNULL)
        state_key = next(iter(redis_client.scan_iter("*:state")))
        midway = wait_until(lambda: int(redis_client.hget(state_key, "last_uid")) >= 20, 60, 0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        replayed = int(redis_client.hget(state_key, "last_uid"))
        assert midway and replayed < 200, "the kill must land mid-replay"
    finally:
        proxy.stop()
    assert wait_until(lambda: not list(redis_client.scan_iter("*:lease")), 30)  # the killed producer's lease
    mailbox.recreate()
    mailbox.append(*(sample_message(i) for i in (*range(200), 900)))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    again = message_ids_after(redis_client, mark)
    lost = [i for i in range(200) if again[f"<msg-0-{i}@example.org>"] == 0]
    twice = [i for i in range(200) if again[f"<msg-0-{i}@example.org>"] == 2]
    assert lost == [] and len(twice) == replayed and max(again.values()) == 2
    assert again["<msg-0-900@example.org>"] == 1
