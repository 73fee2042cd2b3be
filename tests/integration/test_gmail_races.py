"""Gmail (issue 20): folders of one account racing on one message, against the Gmail-like server."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import gmail_claims
from email_ingestion.common.settings import Settings
from email_ingestion.producer import download_budget, gmail_identity, gmail_prefetch
from tests.conftest import USER, run_once
from tests.integration import test_gmail
from tests.integration.test_gmail import MIXED, message, messages_by_msgid
from tests.support.waits import wait_until

gmail = test_gmail.gmail  # the fixtures: the Gmail-like server, and settings following its folders
follow = test_gmail.follow


def own_file(settings: Settings, tmp_path: Path, name: str) -> Settings:
    """`settings` with a copy of its mailboxes file, so a later `follow` does not change what it follows."""
    shutil.copy(tmp_path / "mailboxes.toml", tmp_path / name)
    producer = settings.producer.model_copy(update={"mailboxes_file": tmp_path / name})
    return dataclasses.replace(settings, producer=producer)


def test_two_producers_on_different_folders_give_one_entry_and_download_each(gmail, follow, redis_client, tmp_path):
    """Two producers, one on INBOX + Work and one on Later + All Mail, run at once: one entry and one body each."""
    ids = gmail.store.add_many((message(i), MIXED[i % len(MIXED)]) for i in range(60))
    first = own_file(follow(gmail, "INBOX", "Work"), tmp_path, "first.toml")
    second = follow(gmail, "Later", "\\All")
    outcome: list[int] = []
    producers = [threading.Thread(target=lambda s=s: outcome.append(run_once(s))) for s in (first, second)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(timeout=120)

    assert outcome == [0, 0]
    spam = {str(m) for i, m in enumerate(ids) if "\\Spam" in MIXED[i % len(MIXED)]}
    entries = messages_by_msgid(redis_client)
    assert set(entries) == {str(m) for m in ids} - spam
    assert [k for k, v in entries.items() if len(v) != 1] == []
    assert set(gmail.store.body_downloads.values()) == {1}


def test_label_added_and_removed_between_two_polls_is_no_event(gmail, follow, redis_client):
    """A label added and removed again between two polls leaves the labels as they were: no event."""
    gmail.store.create_label("Work")
    msgid = gmail.store.add(message(1), ["\\Inbox"])
    settings = follow(gmail, "INBOX", "Work", "\\All", GMAIL_LABEL_EVENTS="true")
    assert run_once(settings) == 0
    gmail.store.relabel(msgid, add=["Work"])
    gmail.store.relabel(msgid, remove=["Work"])

    assert run_once(settings) == 0

    assert not messages_by_msgid(redis_client, "labels_changed")
    assert len(messages_by_msgid(redis_client)[str(msgid)]) == 1


@pytest.mark.usefixtures("redis_server")
def test_label_change_while_another_folder_downloads_the_message_is_an_event(gmail, follow, redis_client, tmp_path):
    """A message archived and labelled while INBOX downloads it (its labels read before): All Mail's watcher
    saw the change before the emission, yet one labels_changed event with the labels now follows."""
    both = follow(gmail, "INBOX", "\\All", GMAIL_LABEL_EVENTS="true")
    assert run_once(both) == 0  # the folders' label baselines
    inbox = own_file(follow(gmail, "INBOX", GMAIL_LABEL_EVENTS="true"), tmp_path, "inbox.toml")
    all_mail = own_file(follow(gmail, "\\All", GMAIL_LABEL_EVENTS="true"), tmp_path, "all.toml")
    msgid = gmail.store.add(message(1), ["\\Inbox"])
    gmail.store.hold_after_bodies = 0
    outcome: list[int] = []
    producer = threading.Thread(target=lambda: outcome.append(run_once(inbox)))
    producer.start()
    assert wait_until(gmail.store.holding.is_set, timeout_s=60)  # INBOX read the labels, its body is held

    gmail.store.hold_after_bodies = None
    gmail.store.relabel(msgid, add=["Work"], remove=["\\Inbox"])
    assert run_once(all_mail) == 0
    gmail.store.release.set()
    producer.join(timeout=120)
    assert outcome == [0]
    assert run_once(both) == 0

    [emitted] = messages_by_msgid(redis_client)[str(msgid)]
    assert emitted["gmail_labels"] == ["\\Inbox"]  # read before the change
    [change] = messages_by_msgid(redis_client, "labels_changed")[str(msgid)]
    assert change["gmail_labels"] == ["Work"] and change["labels_removed"] == ["\\Inbox"]
    assert gmail.store.body_downloads == {msgid: 1}


def test_message_gone_between_prefetch_and_download_is_emitted_by_another_folder(
        gmail, follow, redis_client, tmp_path, monkeypatch: Any):
    """A message claimed by Work that leaves Work before its body is read is emitted from All Mail on its
    next pass, not after the claim expires."""
    gmail.store.create_label("Work")
    msgid = gmail.store.add(message(1), ["Work"])
    work = own_file(follow(gmail, "Work"), tmp_path, "work.toml")
    real = gmail_prefetch.GmailPrefetch.to_download

    def removed_after_claim(self: Any, uids: Any, uidvalidity: int) -> list[int]:
        todo = real(self, uids, uidvalidity)
        gmail.store.relabel(msgid, remove=["Work"])
        return todo

    monkeypatch.setattr(gmail_prefetch.GmailPrefetch, "to_download", removed_after_claim)
    assert run_once(work) == 0
    monkeypatch.setattr(gmail_prefetch.GmailPrefetch, "to_download", real)
    assert not messages_by_msgid(redis_client)

    assert run_once(follow(gmail, "Work", "\\All")) == 0

    assert len(messages_by_msgid(redis_client)[str(msgid)]) == 1
    assert gmail.store.body_downloads == {msgid: 1}


def test_claims_that_expire_during_a_budget_wait_are_not_downloaded_twice(
        gmail, follow, redis_client, tmp_path, monkeypatch: Any):
    """Work claims a message, then waits for the download budget longer than its claim lives; All Mail takes
    and emits it meanwhile: Work does not download it again when the budget lets it go on."""
    gmail.store.create_label("Work")
    msgid = gmail.store.add(message(1), ["Work"])
    work = own_file(follow(gmail, "Work"), tmp_path, "work.toml")
    all_mail = own_file(follow(gmail, "\\All"), tmp_path, "all.toml")
    real = download_budget.DownloadBudget._try
    waited: list[bool] = []

    def spent_once(self: Any, size_bytes: int) -> bool:
        if waited:
            return real(self, size_bytes)
        waited.append(True)  # Work's first batch: the budget is spent, and hours go by
        claims = gmail_claims("email_ingestion_stream", USER, str(msgid))
        redis_client.hset(claims, str(msgid), "Work|0")  # its claim expired meanwhile
        assert run_once(all_mail) == 0
        return False

    monkeypatch.setattr(download_budget.DownloadBudget, "_try", spent_once)
    assert run_once(work) == 0

    assert waited and len(messages_by_msgid(redis_client)[str(msgid)]) == 1
    assert gmail.store.body_downloads == {msgid: 1}


def test_label_change_during_the_first_sync_is_an_event(gmail, follow, redis_client, monkeypatch: Any):
    """A label added to a message the first sync already emitted, while that sync goes on, is one
    labels_changed event afterwards (the folder's label baseline predates the sync's emissions)."""
    ids = gmail.store.add_many((message(i), ("\\Inbox",)) for i in range(6))
    settings = follow(gmail, "INBOX", GMAIL_LABEL_EVENTS="true", BATCH_SIZE="2")
    real = gmail_identity.GmailStateStore.emit

    def labelled_after_first_batch(self: Any, *args: Any, **kwargs: Any) -> list[str]:
        added = real(self, *args, **kwargs)
        if str(ids[0]) in messages_by_msgid(redis_client) and "Work" not in gmail.store.messages[ids[0]].labels:
            gmail.store.relabel(ids[0], add=["Work"])
        return added

    monkeypatch.setattr(gmail_identity.GmailStateStore, "emit", labelled_after_first_batch)
    assert run_once(settings) == 0
    assert run_once(settings) == 0

    assert set(messages_by_msgid(redis_client)) == {str(m) for m in ids}
    [change] = messages_by_msgid(redis_client, "labels_changed")[str(ids[0])]
    assert change["labels_added"] == ["Work"]
