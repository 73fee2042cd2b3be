"""One folder, one identity; folders that come and go: real producer processes, real Dovecot,
real redis-server (issue 18 §5-§8)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import MailboxKeys
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import USER, imap_admin, producer_cmd, stream_payloads
from tests.support.waits import finish, wait_until

STREAM = "email_ingestion_stream"


def write_file(tmp_path: Path, entries: list[dict[str, str]]) -> Path:
    path = tmp_path / "mailboxes.toml"
    path.write_text("".join("[[mailbox]]\n" + "".join(f'{k} = "{v}"\n' for k, v in e.items()) for e in entries),
                    encoding="utf-8")
    return path


def status(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as answer:
            body: dict[str, Any] = json.load(answer)
            return body
    except OSError:
        return {}


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
    return max(values) if values else None


@pytest.mark.parametrize(("listed", "spellings"), [
    ("INBOX", ["INBOX", "inbox"]), ("Entwürfe", ["Entwürfe", "Entw&APw-rfe"]),
])
def test_one_folder_listed_under_two_spellings_is_refused_in_one_line(producer_env, redis_client, tmp_path,
                                                                      listed, spellings):
    """INBOX/inbox, or a name in Unicode and in modified UTF-7: exit 2, one line, nothing written."""
    path = write_file(tmp_path, [{"user": USER, "mailbox": name} for name in spellings])
    done = subprocess.run(producer_cmd("--once"), env={**producer_env, "MAILBOXES_FILE": str(path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "listed 2 times" in lines[0] and listed in lines[0], lines
    assert redis_client.dbsize() == 0


def test_a_misspelt_table_is_refused_in_one_line_naming_the_right_one(producer_env, redis_client, tmp_path):
    """[[mailboxes]] instead of [[mailbox]]: exit 2 naming both, instead of rc 0 following nothing."""
    path = tmp_path / "mailboxes.toml"
    path.write_text(f'[[mailbox]]\nuser = "{USER}"\n\n[[mailboxes]]\nuser = "{USER}"\nmailbox = "Sales"\n',
                    encoding="utf-8")
    done = subprocess.run(producer_cmd("--once"), env={**producer_env, "MAILBOXES_FILE": str(path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'mailboxes' (did you mean 'mailbox'?)" in lines[0], lines


def test_inbox_spelt_in_lower_case_is_the_inbox_with_one_identity(producer_env, dovecot, redis_client):
    """IMAP_MAILBOX=inbox, then INBOX: the second run finds the first one's position and
    delivers nothing again; payloads name the folder INBOX."""
    client = imap_admin(dovecot)
    before = int(client.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"])
    client.append("INBOX", sample_message(1))
    client.logout()
    for spelling in ("inbox", "INBOX", "Inbox"):
        done = subprocess.run(producer_cmd("--once"), env={**producer_env, "IMAP_MAILBOX": spelling},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
    payloads = stream_payloads(redis_client)
    assert len(payloads) == before + 1 and {p["mailbox"] for p in payloads} == {"INBOX"}
    shown = subprocess.run([sys.executable, "-m", "email_ingestion", "mailbox", "show", "--json", "--account", USER,
                            "--mailbox", "inbox"], env=producer_env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["mailbox"] == "INBOX", shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["position"], shown.stdout


def test_an_earlier_spellings_position_is_adopted_not_started_over(producer_env, mailbox, redis_client):
    """State a version before issue 18 kept under `inbox` (or under a stream's tag alone) is
    moved to the one identity on first use: nothing is delivered twice after the upgrade."""
    mailbox.append(sample_message(1), sample_message(2))
    env = {**producer_env, "REDIS_STREAM_NAME": "{mail}a"}
    old = MailboxKeys("{mail}a", USER, mailbox.name, layout=1)
    first = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr[-2000:]
    new = MailboxKeys("{mail}a", USER, mailbox.name)
    for now, before in zip(new.history(), old.history(), strict=True):  # as the earlier version left it
        if redis_client.exists(now):
            redis_client.rename(now, before)
    mailbox.append(sample_message(3))
    again = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    uids = Counter(p["uid"] for p in stream_payloads(redis_client, "{mail}a"))
    assert uids == Counter({1: 1, 2: 1, 3: 1}), uids
    assert not any(redis_client.exists(k) for k in old.history())


def test_streams_sharing_a_hash_tag_each_get_every_message_of_a_folder(producer_env, mailbox, redis_client,
                                                                        tmp_path):
    """One folder listed for streams {mail}a and {mail}b: each stream gets all of it, with no
    false "another process runs with this PRODUCER_ID" alarm."""
    mailbox.append(*[sample_message(i) for i in range(5)])
    path = write_file(tmp_path, [{"user": USER, "mailbox": mailbox.name, "stream": s} for s in ("{mail}a", "{mail}b")])
    done = subprocess.run(producer_cmd("--once"), env={**producer_env, "MAILBOXES_FILE": str(path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PRODUCER_ID" not in done.stderr
    for stream in ("{mail}a", "{mail}b"):
        assert sorted(p["uid"] for p in stream_payloads(redis_client, stream)) == [1, 2, 3, 4, 5], stream


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("with_file", [False, True], ids=["single-mailbox", "mailboxes-file"])
def test_a_followed_folder_deleted_and_recreated_is_waited_for_not_fatal(producer_env, mailbox, redis_client,
                                                                         tmp_path, with_file):
    """A client deletes the followed folder and re-creates it: the producer neither exits (2)
    nor parks the mailbox for 5 minutes; /status and the metric show the folder missing
    meanwhile, and mail in the re-created folder is delivered once."""
    mailbox.append(sample_message(1), sample_message(2))
    port = free_port()
    env = {**producer_env, "PRODUCER_METRICS_PORT": str(port), "POLL_INTERVAL_SECONDS": "2"}
    if with_file:
        env["MAILBOXES_FILE"] = str(write_file(tmp_path, [{"user": USER, "mailbox": mailbox.name}]))
    proc = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: redis_client.xlen(STREAM) == 2, 60)
        client = imap_admin(mailbox.server)
        client.delete_folder(mailbox.name)
        client.logout()

        def missing_shown() -> bool:
            body = status(port).get("mailboxes") or [{}]
            return bool(body[0].get("folder_missing")) and metric(port, "email_ingestion_producer_folder_missing") == 1
        assert wait_until(missing_shown, 60), status(port)
        assert proc.poll() is None
        client = imap_admin(mailbox.server)
        client.create_folder(mailbox.name)
        client.logout()
        mailbox.append(sample_message(3), sample_message(4))
        assert wait_until(lambda: redis_client.xlen(STREAM) == 4, 120), redis_client.xlen(STREAM)
        assert wait_until(lambda: metric(port, "email_ingestion_producer_folder_missing") == 0, 30)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code, err = finish(proc, 30)
    assert code == 0, err[-3000:]
    counts = Counter(p["message_id"] for p in stream_payloads(redis_client))
    assert len(counts) == 4 and max(counts.values()) == 1, counts
