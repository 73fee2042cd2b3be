"""UIDVALIDITY re-sync on a real Dovecot and Redis: re-created folders and interrupted
re-syncs deliver no old message again and every new one once (issue 9 §3)."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from collections import Counter

import pytest

from email_ingestion.common.keys import MailboxKeys
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import CORPUS, USER, producer_cmd, run_once, stream_payloads
from tests.support.waits import wait_until

STREAM = "email_ingestion_stream"
WHEN = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def message_ids(client) -> Counter[str]:
    return Counter(p["message_id"] for p in stream_payloads(client))


def recreate_with_new_mail(mailbox, old: int, new: int, msg_time: dt.datetime | None = None) -> list[str]:
    """Delete and re-create the folder, then copy the old messages back (with INTERNALDATE
    `msg_time`, or the time of the copy), interleaved with `new` new ones; returns the new
    Message-IDs."""
    mailbox.recreate()
    raws, new_ids = [], []
    for index in range(old):
        raws.append(sample_message(index))
        if index % (old // new) == 0 and len(new_ids) < new:
            raws.append(sample_message(100_000 + index))
            new_ids.append(f"<msg-0-{100_000 + index}@example.org>")
    for start in range(0, len(raws), 200):
        mailbox.append(*raws[start:start + 200], msg_time=msg_time)
    return new_ids


def assert_each_once(client, old: int, new_ids: list[str]) -> None:
    counts = message_ids(client)
    assert max(counts.values()) == 1, f"re-delivered: {[m for m, n in counts.items() if n > 1][:5]}"
    assert sum(counts.values()) == old + len(new_ids)
    assert set(new_ids) <= set(counts)


def state(client) -> dict[bytes, bytes]:
    return client.hgetall(next(iter(client.scan_iter("*:state"))))


def resync_position(client, uidvalidity: int) -> int:
    """last_uid once the new UIDVALIDITY is stored, else -1."""
    now = state(client)
    return int(now[b"last_uid"]) if int(now[b"uidvalidity"]) == uidvalidity else -1


def test_recreated_folder_without_internaldate_is_not_delivered_again(mailbox, make_settings, redis_client):
    """The copies get a new INTERNALDATE (the re-creation time): the content-derived
    fingerprint still knows them; only the two new messages are emitted."""
    for index in range(6):
        mailbox.append(sample_message(index), msg_time=WHEN)
    settings = make_settings(BATCH_SIZE=4)
    run_once(settings)
    new_ids = recreate_with_new_mail(mailbox, 6, 2)
    assert run_once(settings) == 0
    assert_each_once(redis_client, 6, new_ids)
    run_once(settings)
    assert redis_client.xlen(STREAM) == 8


def test_fingerprints_of_older_versions_are_still_recognised(mailbox, make_settings, redis_client):
    """State written by a version with the INTERNALDATE fingerprint: after the upgrade a
    re-created folder that kept INTERNALDATE is not delivered again."""
    from email_ingestion.producer.identity import legacy_fingerprint
    for index in range(3):
        mailbox.append(sample_message(index), msg_time=WHEN)
    settings = make_settings()
    run_once(settings)
    keys = MailboxKeys(STREAM, USER, mailbox.name)
    seen_key = keys.seen
    redis_client.delete(keys.fingerprints)
    redis_client.hdel(keys.state, "epoch", "baseline_until", "baseline_at")
    for index in range(3):  # what the old version stored for these messages
        raw = sample_message(index)
        redis_client.hset(seen_key, legacy_fingerprint(raw, "2024-05-01T12:00:00Z", len(raw)), f"1:{index + 1}")
    mailbox.recreate()
    for index in range(4):
        mailbox.append(sample_message(index), msg_time=WHEN)
    run_once(settings)
    assert [p["message_id"] for p in stream_payloads(redis_client)[3:]] == ["<msg-0-3@example.org>"]


@pytest.mark.slow
def test_resync_killed_midway_resumes_as_a_resync(mailbox, producer_env, redis_client, dovecot):
    """SIGKILL while a re-sync (of a copy that kept INTERNALDATE) is half done; the next run
    goes on checking fingerprints up to the stored target: 0 old messages again, each new one once."""
    old = 400
    mailbox.append(*[sample_message(i) for i in range(old)], msg_time=WHEN)
    assert subprocess.run(producer_cmd("--once"), env=producer_env, timeout=120).returncode == 0
    new_ids = recreate_with_new_mail(mailbox, old, 20, msg_time=WHEN)
    proxy = TcpProxy(dovecot.port, delay_s=0.01).start()
    env = {**producer_env, "IMAP_PORT": str(proxy.port), "BATCH_SIZE": "10"}
    try:
        proc = subprocess.Popen(producer_cmd("--once"), env=env, stderr=subprocess.PIPE, text=True)
        uidvalidity = mailbox.uidvalidity()
        resumed = wait_until(lambda: resync_position(redis_client, uidvalidity) >= 60, 60, 0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert resumed
        assert resync_position(redis_client, uidvalidity) < old + len(new_ids), "the kill must land mid-re-sync"
        done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        proxy.stop()
    assert_each_once(redis_client, old, new_ids)


@pytest.mark.slow
def test_resync_survives_a_connection_reset_after_its_first_batch(mailbox, producer_env, redis_client, dovecot):
    """The connection is reset (RST) right after the first re-sync batch is written; the
    producer reconnects and finishes the re-sync: 0 old messages again, each new one once."""
    old = 200
    mailbox.append(*[sample_message(i) for i in range(old)], msg_time=WHEN)
    assert subprocess.run(producer_cmd("--once"), env=producer_env, timeout=120).returncode == 0
    new_ids = recreate_with_new_mail(mailbox, old, 10, msg_time=WHEN)
    proxy = TcpProxy(dovecot.port, delay_s=0.02).start()
    env = {**producer_env, "IMAP_PORT": str(proxy.port), "BATCH_SIZE": "10", "POLL_INTERVAL_SECONDS": "300"}
    proc = subprocess.Popen(producer_cmd(), env=env, stderr=subprocess.PIPE, text=True)
    uidvalidity, highest = mailbox.uidvalidity(), old + len(new_ids)
    try:
        assert wait_until(lambda: resync_position(redis_client, uidvalidity) >= 10, 60, 0.002)
        proxy.reset_existing()
        assert resync_position(redis_client, uidvalidity) < highest, "the reset must land mid-re-sync"
        assert wait_until(lambda: resync_position(redis_client, uidvalidity) >= highest, 90)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        proxy.stop()
    assert "reconnecting after backoff" in err
    assert proxy.connections >= 2
    assert_each_once(redis_client, old, new_ids)


@pytest.mark.skipif(not CORPUS.exists(), reason="shared corpus not present")
def test_recreated_corpus_folder_is_not_delivered_again(mailbox, make_settings, redis_client):
    """Real-world mail (odd folding, 8-bit headers, missing fields): the header-only re-sync
    fetch gives the same fingerprint as the whole message, so a re-created copy adds nothing."""
    raws = [f.read_bytes() for f in sorted(CORPUS.rglob("*.eml"))]
    for start in range(0, len(raws), 50):
        mailbox.append(*raws[start:start + 50])
    settings = make_settings(BATCH_SIZE=40)
    assert run_once(settings) == 0
    mailbox.recreate()
    for start in range(0, len(raws), 50):
        mailbox.append(*raws[start:start + 50])
    assert run_once(settings) == 0
    assert redis_client.xlen(STREAM) == len(raws)
