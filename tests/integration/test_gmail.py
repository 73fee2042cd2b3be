"""Gmail as Gmail (issue 20), against the Gmail-like server of tests/support/gmail_server."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import gmail_downloads
from email_ingestion.common.settings import Settings, load_settings
from email_ingestion.producer import download_budget
from email_ingestion.worker.cli import build_worker
from tests.conftest import PASSWORD, USER, base_env, run_once, stream_payloads
from tests.support.gmail_server.server import GmailServer
from tests.support.waits import wait_until


def message(index: int, subject: str = "hello") -> bytes:
    return (f"From: Sender {index} <s{index}@example.com>\r\nTo: {USER}\r\nSubject: {subject} {index}\r\n"
            f"Message-ID: <m{index}@example.com>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
            f"body of message {index}\r\n").encode()


@pytest.fixture
def gmail() -> Iterator[GmailServer]:
    server = GmailServer(users={USER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture
def localised_gmail() -> Iterator[GmailServer]:
    server = GmailServer(users={USER: PASSWORD}, localised=True).start()
    yield server
    server.stop()


@pytest.fixture
def follow(redis_server: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Settings following the given folders of the test account, one [[mailbox]] each."""
    def make(server: GmailServer, *folders: str, **env: Any) -> Settings:
        for key in [k for k in os.environ if k.startswith(("IMAP_", "REDIS_", "GOOGLE_"))]:
            monkeypatch.delenv(key)
        mailboxes = tmp_path / "mailboxes.toml"
        mailboxes.write_text("".join(f'[[mailbox]]\nuser = "{USER}"\nmailbox = {_toml(f)}\n\n' for f in folders))
        values = {**base_env(server.port, redis_server.url, "INBOX"), "MAILBOXES_FILE": str(mailboxes),
                  "PARALLEL_PARSE": "false", **{k: str(v) for k, v in env.items()}}
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        return load_settings(env_file=None)
    return make


def _toml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\") + '"'


def messages_by_msgid(redis_client: Any, event: str = "message") -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for payload in stream_payloads(redis_client):
        if payload.get("event", "message") == event:
            found.setdefault(payload["gmail_msgid"], []).append(payload)
    return found


MIXED = [("\\Inbox",), ("\\Inbox", "Work"), ("Work", "Later"), ("Later",), (), ("\\Inbox", "\\Important", "Work"),
         ("\\Sent",), ("\\Spam",), ("Work",), ("\\Inbox", "Later")]


def test_inbox_two_labels_and_all_mail_give_one_entry_and_one_download_per_message(gmail, follow, redis_client):
    """INBOX + two labels + All Mail of one account: exactly one entry and one body download per message."""
    ids = gmail.store.add_many((message(i), labels) for i, labels in enumerate(MIXED))
    expected = {str(msgid) for msgid, labels in zip(ids, MIXED, strict=True) if "\\Spam" not in labels}

    assert run_once(follow(gmail, "INBOX", "Work", "Later", "[Gmail]/All Mail")) == 0

    entries = messages_by_msgid(redis_client)
    assert set(entries) == expected and all(len(copies) == 1 for copies in entries.values())
    assert {str(m) for m in gmail.store.body_downloads} == expected
    assert set(gmail.store.body_downloads.values()) == {1}


def test_payload_carries_every_label_and_the_thread(gmail, follow, redis_client):
    """Each payload has all the message's labels (the folder's own included, as Gmail names them) and X-GM-THRID."""
    msgid = gmail.store.add(message(1), ["\\Inbox", "\\Important", "Wörk/Sub"], thrid=42)

    assert run_once(follow(gmail, "Wörk/Sub")) == 0

    [payload] = messages_by_msgid(redis_client)[str(msgid)]
    assert payload["gmail_labels"] == sorted(["\\Important", "\\Inbox", "Wörk/Sub"])
    assert payload["gmail_thrid"] == "42" and payload["event"] == "message" and payload["schema_version"] == 2


def test_restart_re_emits_and_re_downloads_nothing(gmail, follow, redis_client):
    """A second producer run over the same folders adds no entry and downloads no body again."""
    gmail.store.add_many((message(i), labels) for i, labels in enumerate(MIXED))
    settings = follow(gmail, "INBOX", "Work", "\\All")
    assert run_once(settings) == 0
    entries, downloads = redis_client.xlen("email_ingestion_stream"), dict(gmail.store.body_downloads)

    assert run_once(settings) == 0

    assert redis_client.xlen("email_ingestion_stream") == entries
    assert gmail.store.body_downloads == downloads


def test_special_use_all_resolves_to_a_localised_all_mail(localised_gmail, follow, redis_client):
    """`\\All` follows `[Google Mail]/All Mail`: every message but Spam and Trash, once."""
    ids = localised_gmail.store.add_many((message(i), labels) for i, labels in enumerate(MIXED))

    assert run_once(follow(localised_gmail, "\\All")) == 0

    entries = messages_by_msgid(redis_client)
    assert set(entries) == {str(m) for m, labels in zip(ids, MIXED, strict=True) if "\\Spam" not in labels}


def test_old_mail_is_not_delivered_again_when_labelled_or_moved_back(gmail, follow, redis_client):
    """A label added to old mail, a message back in INBOX, a label folder followed later: no new entry."""
    ids = gmail.store.add_many((message(i), labels) for i, labels in enumerate(MIXED))
    assert run_once(follow(gmail, "INBOX", "\\All")) == 0
    before = redis_client.xlen("email_ingestion_stream")
    gmail.store.relabel(ids[3], add=["\\Inbox"])  # archived mail moved back to INBOX: a new INBOX UID
    gmail.store.relabel(ids[4], add=["Fresh"])

    assert run_once(follow(gmail, "INBOX", "\\All", "Fresh", "Work")) == 0

    assert redis_client.xlen("email_ingestion_stream") == before


def test_id_is_sent_when_advertised(gmail, follow):
    """The producer identifies itself with ID (RFC 2971) on a server that offers it."""
    gmail.store.add(message(1))
    assert run_once(follow(gmail, "INBOX")) == 0
    assert gmail.store.id_commands and gmail.store.id_commands[0][:2] == ["name", "email-ingestion"]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, payload: Any, ctx: Any) -> None:
        self.calls.append((payload.event, payload.idempotency_key))


def run_worker_burst(settings: Settings, handler: Any) -> None:
    stop = threading.Event()
    worker = build_worker(settings, "w1", stop)
    worker.processor.handler = handler
    timer = threading.Timer(60, stop.set)
    timer.start()
    try:
        worker.run(burst=True)
    finally:
        timer.cancel()
    assert not stop.is_set(), "burst did not finish in time"


def test_label_added_and_removed_is_one_event_that_reaches_the_handler(gmail, follow, redis_client, monkeypatch):
    """With GMAIL_LABEL_EVENTS, archiving and labelling a message seen in three folders is one labels_changed event,
    which a worker hands to the handler under its own idempotency key."""
    msgid = gmail.store.add(message(1), ["\\Inbox", "Work"])
    settings = follow(gmail, "INBOX", "Work", "\\All", GMAIL_LABEL_EVENTS="true")
    assert run_once(settings) == 0
    gmail.store.relabel(msgid, add=["Urgent"], remove=["\\Inbox"])

    assert run_once(settings) == 0

    [change] = messages_by_msgid(redis_client, "labels_changed")[str(msgid)]
    assert change["labels_added"] == ["Urgent"] and change["labels_removed"] == ["\\Inbox"]
    assert change["gmail_labels"] == ["Urgent", "Work"]
    monkeypatch.setenv("WORKER_BLOCK_TIMEOUT_MS", "200")
    monkeypatch.setenv("WORKER_METRICS_PORT", "0")
    recorder = Recorder()
    run_worker_burst(load_settings(env_file=None), recorder)
    assert sorted(recorder.calls) == [("labels_changed", change["idempotency_key"]),
                                      ("message", f"gm:{USER}:{msgid}")]


def test_label_events_are_off_by_default(gmail, follow, redis_client):
    """Without GMAIL_LABEL_EVENTS a label change emits nothing."""
    msgid = gmail.store.add(message(1), ["\\Inbox"])
    settings = follow(gmail, "INBOX", "\\All")
    assert run_once(settings) == 0
    gmail.store.relabel(msgid, add=["Urgent"])
    assert run_once(settings) == 0
    assert not messages_by_msgid(redis_client, "labels_changed")


def test_download_budget_pauses_bodies_and_resumes_as_the_window_moves(gmail, follow, redis_client, monkeypatch):
    """When GMAIL_DAILY_DOWNLOAD_MB is spent, bodies wait (the wait is recorded) and resume as the window moves."""
    # 6 s, not 2 s: the second batch must ask for its bytes while the first batch's are still
    # in the window, and on a loaded machine two batches can be more than 2 s apart.
    monkeypatch.setattr(download_budget, "WINDOW_MS", 6000)
    monkeypatch.setattr(download_budget, "SLOTS", 20)
    ids = gmail.store.add_many((message(i), ("\\Inbox",)) for i in range(9))
    total = sum(len(message(i)) for i in range(9))
    settings = follow(gmail, "INBOX", GMAIL_DAILY_DOWNLOAD_MB=str(3.5 * len(message(0)) / 1e6), BATCH_SIZE="3")
    key = gmail_downloads("email_ingestion_stream", USER)
    outcome: list[int] = []
    producer = threading.Thread(target=lambda: outcome.append(run_once(settings)))
    producer.start()

    assert wait_until(lambda: redis_client.hexists(key, "waiting_until_ms"), timeout_s=30)
    assert gmail.store.body_bytes < total  # paused with bodies left

    producer.join(timeout=120)
    assert outcome == [0]
    assert set(messages_by_msgid(redis_client)) == {str(m) for m in ids}
    assert set(gmail.store.body_downloads.values()) == {1}
    assert not redis_client.hexists(key, "waiting_until_ms")


def run_until_stopped(settings: Settings, stop: threading.Event) -> threading.Thread:
    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import run
    thread = threading.Thread(target=run, args=(settings, stop, Redactor(settings.secrets())),
                              kwargs={"once": True, "dry_run": False})
    thread.start()
    return thread


def test_newest_first_brings_the_latest_batch_first_then_new_mail(gmail, follow, redis_client):
    """INITIAL_SYNC_ORDER=newest: the newest message's batch is the first on the stream; later mail follows."""
    ids = gmail.store.add_many((message(i), ("\\Inbox",)) for i in range(23))
    settings = follow(gmail, "INBOX", INITIAL_SYNC_ORDER="newest", BATCH_SIZE="5")
    assert run_once(settings) == 0
    later = gmail.store.add(message(99))
    assert run_once(settings) == 0

    order = [p["gmail_msgid"] for p in stream_payloads(redis_client)]
    assert sorted(order) == sorted(str(m) for m in [*ids, later])
    assert order[:5] == [str(m) for m in ids[18:23]]  # the newest batch (UIDs 19-23), ascending inside
    assert order.index(str(ids[-1])) < order.index(str(ids[0])) and order[-1] == str(later)


@pytest.mark.parametrize("order", ["oldest", "newest"])
def test_interrupted_first_sync_resumes_without_repeats(gmail, follow, redis_client, order):
    """A first sync stopped mid-way resumes where it stopped, in either order: every message once, and
    at most the batch in flight (and the one read ahead) downloaded again."""
    ids = gmail.store.add_many((message(i), ("\\Inbox",)) for i in range(40))
    settings = follow(gmail, "INBOX", INITIAL_SYNC_ORDER=order, BATCH_SIZE="5")
    gmail.store.hold_after_bodies = 12
    stop = threading.Event()
    producer = run_until_stopped(settings, stop)
    assert wait_until(gmail.store.holding.is_set, timeout_s=30)
    stop.set()
    gmail.store.release.set()
    producer.join(timeout=60)
    first_run = redis_client.xlen("email_ingestion_stream")
    assert 0 < first_run < 40
    gmail.store.hold_after_bodies = None

    assert run_once(settings) == 0

    entries = messages_by_msgid(redis_client)
    assert set(entries) == {str(m) for m in ids} and all(len(c) == 1 for c in entries.values())
    assert sum(gmail.store.body_downloads.values()) <= 40 + 2 * 5


def test_first_sync_progress_in_status_and_metrics(gmail, follow, redis_client):
    """A first sync reports done/total, rate and ETA in /status and the progress metrics."""
    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_runner
    gmail.store.add_many((message(i), ("\\Inbox",)) for i in range(12))
    settings = follow(gmail, "INBOX", BATCH_SIZE="5")
    runner = build_runner(settings, threading.Event(), Redactor(settings.secrets()))

    runner.run(once=True)

    progress = runner.status_body()["sync_progress"]
    assert progress["done"] == progress["total"] == 12 and progress["rate_per_s"] > 0
    assert runner.metrics.registry.get_sample_value(
        "email_ingestion_sync_progress_total", {"account": USER, "mailbox": "INBOX"}) == 12


def test_inbox_mail_goes_out_from_inbox_and_archived_mail_from_all_mail(gmail, follow, redis_client):
    """With INBOX followed, mail labelled \\Inbox is emitted from INBOX (not All Mail or a label folder); the rest
    from the other folders; new INBOX mail on a later pass too."""
    ids = gmail.store.add_many((message(i), labels) for i, labels in enumerate(MIXED))
    settings = follow(gmail, "INBOX", "Work", "\\All")
    assert run_once(settings) == 0
    later = gmail.store.add(message(50), ["\\Inbox", "Work"])
    assert run_once(settings) == 0

    entries = messages_by_msgid(redis_client)
    for msgid, labels in [*zip(ids, MIXED, strict=True), (later, ("\\Inbox", "Work"))]:
        if "\\Spam" not in labels:
            [payload] = entries[str(msgid)]
            assert (payload["mailbox"] == "INBOX") == ("\\Inbox" in labels), (labels, payload["mailbox"])


def test_archived_before_inbox_emitted_it_is_emitted_from_all_mail(gmail, follow, redis_client):
    """All Mail leaves INBOX mail to INBOX; if it is archived before INBOX emitted it, All Mail emits it next pass."""
    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_runner
    from email_ingestion.producer.mailboxes import load_mailboxes
    msgid = gmail.store.add(message(1), ["\\Inbox"])
    [all_mail] = load_mailboxes(follow(gmail, "\\All"))

    def all_mail_pass() -> None:  # All Mail alone, told that INBOX is followed (by a producer that is down)
        runner = build_runner(all_mail.settings, threading.Event(), Redactor(all_mail.settings.secrets()),
                              inbox_followed=True)
        runner.run(once=True)

    all_mail_pass()
    assert not messages_by_msgid(redis_client)  # left to INBOX
    gmail.store.relabel(msgid, remove=["\\Inbox"])
    all_mail_pass()

    [payload] = messages_by_msgid(redis_client)[str(msgid)]
    assert payload["mailbox"] == "\\All" and payload["gmail_labels"] == []


def test_uidvalidity_change_re_sends_nothing(gmail, follow, redis_client):
    """A folder renumbered under a new UIDVALIDITY is re-checked by X-GM-MSGID: no entry, no download again."""
    gmail.store.add_many((message(i), labels) for i, labels in enumerate(MIXED))
    settings = follow(gmail, "INBOX", "\\All")
    assert run_once(settings) == 0
    entries, downloads = redis_client.xlen("email_ingestion_stream"), dict(gmail.store.body_downloads)
    gmail.store.reset_uidvalidity("[Gmail]/All Mail")
    gmail.store.reset_uidvalidity("INBOX")

    assert run_once(settings) == 0

    assert redis_client.xlen("email_ingestion_stream") == entries
    assert gmail.store.body_downloads == downloads


def test_mailbox_reset_re_emits_on_gmail_what_it_asks_for_and_nothing_else(gmail, follow, redis_client):
    """`email-ingest mailbox reset --uid N` on a Gmail folder emits its messages above N again (the identity store
    does not hold them back), once, and nothing from the other folders."""
    from email_ingestion.admin.mailbox import reset
    from email_ingestion.common.keys import MailboxKeys
    ids = gmail.store.add_many((message(i), ("\\Inbox", "Work")) for i in range(6))
    settings = follow(gmail, "INBOX", "Work")
    assert run_once(settings) == 0
    reset(redis_client, MailboxKeys("email_ingestion_stream", USER, "INBOX"), 3)

    assert run_once(settings) == 0
    assert run_once(settings) == 0

    entries = messages_by_msgid(redis_client)
    assert {m: len(entries[str(m)]) for m in ids} == {m: 1 if i < 3 else 2 for i, m in enumerate(ids)}


def test_email_ingest_status_shows_a_first_sync_in_progress(gmail, follow, redis_client, capsys):
    """While a first sync runs, `email-ingest status` shows the mailbox's done/total, rate and ETA."""
    from email_ingestion.admin.status import main as status_main
    gmail.store.add_many((message(i), ("\\Inbox",)) for i in range(40))
    settings = follow(gmail, "INBOX", BATCH_SIZE="5")
    gmail.store.hold_after_bodies = 22
    stop = threading.Event()
    producer = run_until_stopped(settings, stop)
    try:
        assert wait_until(gmail.store.holding.is_set, timeout_s=30)
        assert wait_until(lambda: redis_client.xlen("email_ingestion_stream") >= 15, timeout_s=30)
        status_main(["--env-file", "/dev/null"])
        shown = capsys.readouterr().out
    finally:
        stop.set()
        gmail.store.release.set()
        producer.join(timeout=60)
    line = next(text for text in shown.splitlines() if "INBOX" in text)
    assert "syncing=" in line and "/40 rate=" in line and "eta=" in line


def test_trashing_is_a_label_event_when_trash_is_followed(gmail, follow, redis_client):
    """With \\Trash followed next to \\All, trashing a message is one labels_changed event (\\Trash added), no message."""
    msgid = gmail.store.add(message(1), ["\\Inbox"])
    settings = follow(gmail, "\\All", "\\Trash", GMAIL_LABEL_EVENTS="true")
    assert run_once(settings) == 0
    gmail.store.relabel(msgid, add=["\\Trash"], remove=["\\Inbox"])

    assert run_once(settings) == 0

    [change] = messages_by_msgid(redis_client, "labels_changed")[str(msgid)]
    assert change["labels_added"] == ["\\Trash"] and change["labels_removed"] == ["\\Inbox"]
    assert len(messages_by_msgid(redis_client)[str(msgid)]) == 1


def test_a_frozen_build_of_mail_left_to_inbox_is_cut_off_at_shutdown(gmail, follow, redis_client):
    """All Mail emitting a message INBOX left to it (its deferred retry) with the payload helper
    frozen (SIGSTOP): runner.abort() cuts that build off like any other (it waited for it forever),
    nothing is written for it, and a later pass emits it once."""
    import signal

    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_pool, build_runner
    from email_ingestion.producer.mailboxes import load_mailboxes
    msgid = gmail.store.add(message(1), ["\\Inbox"])
    gmail.store.add(message(2), [])
    [all_mail] = load_mailboxes(follow(gmail, "\\All"))
    pool = build_pool(all_mail.settings, size=1)

    def runner() -> Any:  # All Mail alone, told that INBOX is followed (by a producer that is down)
        return build_runner(all_mail.settings, threading.Event(), Redactor(all_mail.settings.secrets()),
                            inbox_followed=True, builds=pool)

    runner().run(once=True)  # message 2 built (the helper stays for the next pass); message 1 left to INBOX
    assert len(stream_payloads(redis_client)) == 1
    gmail.store.relabel(msgid, remove=["\\Inbox"])
    helper = pool.helpers[0]
    assert helper.pid is not None
    os.kill(helper.pid, signal.SIGSTOP)
    try:
        frozen = runner()
        thread = threading.Thread(target=frozen.run, kwargs={"once": True}, daemon=True)
        thread.start()
        assert wait_until(helper._lock.locked, 60), "the deferred message's build is in hand"
        frozen.abort()
        thread.join(60)
        assert not thread.is_alive(), "the deferred build held the shutdown"
    finally:
        if helper.pid is not None:
            os.kill(helper.pid, signal.SIGKILL)
    assert len(stream_payloads(redis_client)) == 1
    runner().run(once=True)
    pool.close()
    [payload] = messages_by_msgid(redis_client)[str(msgid)]
    assert not payload["parse_error"]
    assert len(stream_payloads(redis_client)) == 2
