"""Sync behaviour against a real Dovecot and a real Redis."""

from __future__ import annotations

import datetime as dt

import pytest

from email_ingestion.imap.session import ImapSession
from email_ingestion.sandbox.sample_mail import BROKEN_MESSAGES, sample_message
from tests.conftest import CORPUS, run_once, stream_payloads


def test_first_sync_emits_every_message_once_in_uid_order(mailbox, make_settings, redis_client):
    """Given 7 messages, a first pass emits 7 entries with UIDs 1..7 and valid payloads."""
    mailbox.append(*[sample_message(i) for i in range(7)])
    assert run_once(make_settings(BATCH_SIZE=3)) == 0
    payloads = stream_payloads(redis_client)
    assert [p["uid"] for p in payloads] == [1, 2, 3, 4, 5, 6, 7]
    assert payloads[0]["message_id"] == "<msg-0-0@example.org>"
    assert payloads[0]["from"] == {"name": "Sender 0", "address": "sender0@example.org"}
    assert payloads[0]["body_text"].startswith(sample_message(0).split(b"\r\n\r\n")[1][:20].decode())
    assert len({p["idempotency_key"] for p in payloads}) == 7


def test_incremental_sync_emits_only_new_mail(mailbox, make_settings, redis_client):
    """A second pass emits only the message that arrived after the first."""
    mailbox.append(sample_message(1), sample_message(2))
    settings = make_settings()
    run_once(settings)
    mailbox.append(sample_message(3))
    run_once(settings)
    assert [p["uid"] for p in stream_payloads(redis_client)] == [1, 2, 3]


def test_no_new_mail_emits_nothing(mailbox, make_settings, redis_client):
    """RFC 3501: `UID SEARCH 4:*` returns UID 3 when 3 is the highest; it must not be re-sent."""
    mailbox.append(sample_message(1), sample_message(2), sample_message(3))
    settings = make_settings()
    run_once(settings)
    run_once(settings)
    run_once(settings)
    assert redis_client.xlen("email_ingestion_stream") == 3


def test_nothing_is_marked_seen(mailbox, make_settings, redis_client, dovecot):
    """Syncing does not set the Seen flag on the messages it reads."""
    from tests.conftest import imap_admin
    mailbox.append(sample_message(1))
    run_once(make_settings())
    client = imap_admin(dovecot)
    client.select_folder(mailbox.name, readonly=True)
    flags = client.get_flags([1])[1]
    client.logout()
    assert b"\\Seen" not in flags


def test_fetches_in_batches_not_per_message(mailbox, make_settings, redis_client, monkeypatch):
    """25 messages with BATCH_SIZE=10 take 3 UID FETCH commands, not 25."""
    mailbox.append(*[sample_message(i) for i in range(25)])
    calls = []
    original = ImapSession.fetch

    def counting(self, uids, items):
        calls.append(len(uids))
        return original(self, uids, items)

    monkeypatch.setattr(ImapSession, "fetch", counting)
    run_once(make_settings(BATCH_SIZE=10))
    assert calls == [10, 10, 5]
    assert redis_client.xlen("email_ingestion_stream") == 25


def test_uidvalidity_change_emits_only_new_messages(mailbox, make_settings, redis_client):
    """Mailbox deleted and re-created with the same messages plus two new ones: only the
    two new ones are emitted, the change is counted and logged once."""
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    old = [sample_message(i) for i in range(4)]
    for raw in old:
        mailbox.append(raw, msg_time=when)
    settings = make_settings()
    run_once(settings)
    before = mailbox.uidvalidity()
    mailbox.recreate()
    for raw in old + [sample_message(10), sample_message(11)]:
        mailbox.append(raw, msg_time=when)
    assert mailbox.uidvalidity() != before
    run_once(settings)
    payloads = stream_payloads(redis_client)
    assert len(payloads) == 6
    assert [p["message_id"] for p in payloads[4:]] == ["<msg-0-10@example.org>", "<msg-0-11@example.org>"]
    assert payloads[4]["uidvalidity"] == mailbox.uidvalidity()
    run_once(settings)
    assert redis_client.xlen("email_ingestion_stream") == 6


def test_initial_sync_new_skips_existing_mail_even_after_uidvalidity_change(mailbox, make_settings, redis_client):
    """INITIAL_SYNC=new emits nothing for mail present at the first run, then only later mail."""
    mailbox.append(sample_message(1), sample_message(2))
    settings = make_settings(INITIAL_SYNC="new")
    run_once(settings)
    assert redis_client.xlen("email_ingestion_stream") == 0
    mailbox.append(sample_message(3))
    run_once(settings)
    assert [p["message_id"] for p in stream_payloads(redis_client)] == ["<msg-0-3@example.org>"]


def test_initial_sync_since_date(mailbox, make_settings, redis_client):
    """INITIAL_SYNC=since:DATE emits only messages received on or after that date."""
    mailbox.append(sample_message(1), msg_time=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    mailbox.append(sample_message(2), msg_time=dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    run_once(make_settings(INITIAL_SYNC="since:2024-01-01"))
    assert [p["message_id"] for p in stream_payloads(redis_client)] == ["<msg-0-2@example.org>"]


def test_broken_messages_all_come_out_as_payloads(mailbox, make_settings, redis_client):
    """Each broken sample synced through Dovecot becomes a payload with the right decoding and defects."""
    mailbox.append(*[raw for _, raw in BROKEN_MESSAGES])
    assert run_once(make_settings()) == 0
    payloads = stream_payloads(redis_client)
    assert len(payloads) == len(BROKEN_MESSAGES)
    by_name = dict(zip([name for name, _ in BROKEN_MESSAGES], payloads, strict=True))
    assert "Café" in by_name["unknown charset"]["body_text"]
    assert "unknown charset 'x-no-such-charset'" in by_name["unknown charset"]["parse_defects"]
    assert by_name["8-bit headers"]["from"]["name"] == "Jürgen"
    assert "\x00" not in by_name["NUL bytes"]["subject"] + by_name["NUL bytes"]["body_text"]
    assert "missing From" in by_name["no headers at all"]["parse_defects"]
    assert by_name["garbage date and addresses"]["date"] is None
    assert by_name["rfc2231 filename"]["attachments"][0]["filename"] == "résumé.pdf"
    assert by_name["html only, bad QP"]["body_text"].startswith("Café")


def test_dry_run_writes_nothing(mailbox, producer_env, redis_client):
    """--dry-run prints one line per message and writes nothing to Redis."""
    import subprocess

    from tests.conftest import producer_cmd
    mailbox.append(sample_message(1), sample_message(2))
    done = subprocess.run(producer_cmd("--dry-run"), env=producer_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["uid=1", "uid=2"]
    assert redis_client.dbsize() == 0


@pytest.mark.skipif(not CORPUS.exists(), reason="shared corpus not present")
def test_corpus_through_a_real_sync(mailbox, make_settings, redis_client):
    """Every message of the public corpus goes through Dovecot and comes out as a payload."""
    files = sorted(CORPUS.rglob("*.eml"))
    raws = [f.read_bytes() for f in files]
    for start in range(0, len(raws), 50):
        mailbox.append(*raws[start:start + 50])
    assert run_once(make_settings(BATCH_SIZE=40)) == 0
    payloads = stream_payloads(redis_client)
    assert len(payloads) == len(files)
    assert sorted(p["uid"] for p in payloads) == list(range(1, len(files) + 1))


def test_message_expunged_between_search_and_fetch_is_skipped_and_counted(mailbox, make_settings, redis_client,
                                                                          dovecot, monkeypatch, caplog):
    """UIDs 2 and 4 are expunged after the pass's SEARCH, before its FETCH: Dovecot answers
    BODY[] NIL, RFC822.SIZE 0; they are never emitted, and counted and logged as skipped."""
    import threading

    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_runner
    from email_ingestion.producer.fetch import MessageFetcher
    from tests.conftest import imap_admin

    mailbox.append(*[sample_message(i) for i in range(5)])
    original = MessageFetcher.download

    def expunge_then_download(self, uids, large):
        admin = imap_admin(dovecot)
        admin.select_folder(mailbox.name)
        admin.delete_messages([2, 4])
        admin.expunge()
        admin.logout()
        return original(self, uids, large)

    monkeypatch.setattr(MessageFetcher, "download", expunge_then_download)
    settings = make_settings()
    runner = build_runner(settings, threading.Event(), Redactor(settings.secrets()))
    runner.run(once=True)
    assert [p["uid"] for p in stream_payloads(redis_client)] == [1, 3, 5]
    labels = {"account": settings.imap.user, "mailbox": mailbox.name}
    registry = runner.metrics.registry
    assert registry.get_sample_value("email_ingestion_producer_expunged_skipped_total", labels) == 2
    assert registry.get_sample_value("email_ingestion_producer_duplicates_skipped_total", labels) == 0
    assert "expunged between SEARCH and FETCH" in caplog.text


@pytest.mark.parametrize("esearch", [True, False])
def test_uids_in_the_billions_are_reached_without_searching_the_gap(dovecot, make_settings, redis_client,
                                                                    monkeypatch, esearch):
    """A folder whose UIDs start at 3,000,000,000 (as after a migration): the gap below is
    jumped (ESEARCH MIN, or FETCH 1 (UID) without ESEARCH), not searched in 60,000 windows."""
    import uuid

    from tests.conftest import USER
    folder = f"far-{uuid.uuid4().hex[:8]}"
    dovecot.seed_maildir_with_uids(USER, [sample_message(i) for i in range(30)], folder, first_uid=3_000_000_000)
    monkeypatch.setattr(ImapSession, "can_esearch", property(lambda self: esearch))
    searches = []
    original = ImapSession.uids_in
    monkeypatch.setattr(ImapSession, "uids_in", lambda self, *a: searches.append(a) or original(self, *a))
    assert run_once(make_settings(IMAP_MAILBOX=folder, BATCH_SIZE=10)) == 0
    assert [p["uid"] for p in stream_payloads(redis_client)] == list(range(3_000_000_000, 3_000_000_030))
    assert len(searches) <= 4
