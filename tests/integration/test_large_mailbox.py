"""A mailbox far beyond imaplib's 1,000,000-byte reply line, on a real Dovecot (issue 9 §2)."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import USER, producer_cmd

pytestmark = pytest.mark.slow

MESSAGES = 200_000
FIRST_UID = 3_000_000_000  # 11 bytes per UID in a SEARCH reply: 2.2 MB for the whole mailbox


def stream_uids(client, stream: str = "email_ingestion_stream") -> list[int]:
    uids, start = [], "-"
    while batch := client.xrange(stream, min=start, count=20_000):
        uids += [json.loads(fields[b"payload"])["uid"] for _, fields in batch]
        start = "(" + batch[-1][0].decode()
    return uids


@pytest.mark.timeout(600)  # ~50 s alone on 2 cores; a loaded CI machine can take several times that
def test_first_sync_of_200k_messages_delivers_each_once(dovecot, producer_env, redis_client):
    """200,000 messages with UIDs in the billions (one SEARCH reply would be 2.2 MB): the first
    sync completes with exit 0 and every UID is in the stream exactly once, in order."""
    folder = f"big-{uuid.uuid4().hex[:8]}"
    count = dovecot.seed_maildir_with_uids(
        USER, (sample_message(i, body_bytes=60) for i in range(MESSAGES)), folder, first_uid=FIRST_UID)
    env = {**producer_env, "IMAP_MAILBOX": folder, "REDIS_MAX_STREAM_LENGTH": str(2 * MESSAGES),
           "LOG_LEVEL": "WARNING", "IMAP_TIMEOUT_SECONDS": "120"}
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert stream_uids(redis_client) == list(range(FIRST_UID, FIRST_UID + count))
