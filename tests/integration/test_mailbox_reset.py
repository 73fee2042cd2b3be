"""`email-ingest mailbox reset`: re-ingest a mailbox with a real producer and real workers."""

from __future__ import annotations

import subprocess
import sys

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, USER, producer_cmd

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
