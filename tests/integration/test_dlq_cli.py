"""The DLQ admin CLI's conventions: missing ids exit 1, ISO times, --json anywhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import ROOT

DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z"


def dlq(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "email_ingestion.worker.dlq_admin", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def add_letter(client) -> str:
    fields = {"payload": "{}", "reason": "permanent", "error_type": "PermanentError", "attempts": "1",
              "first_failure_ms": "1764648151224", "last_failure_ms": "1764648152224", "dead_at_ms": "1764648152300"}
    return client.xadd(DLQ, fields).decode()


def test_show_of_a_missing_id_exits_1(redis_server, redis_client):
    """`dlq show` of an id that is not there says so on stderr and exits 1."""
    add_letter(redis_client)
    done = dlq(redis_server.url, "show", "1-0")
    assert done.returncode == 1 and "no dead letter 1-0" in done.stderr and done.stdout == ""
    done = dlq(redis_server.url, "--json", "show", "1-0")
    assert done.returncode == 1


def test_list_is_one_readable_line_per_letter_and_show_prints_iso_times(redis_server, redis_client):
    """`dlq list` is a table (id, age, reason, account, mailbox, uid, Message-ID), no epoch
    milliseconds, no repr; `dlq show` gives first/last failure and death as ISO 8601 UTC."""
    letter = add_letter(redis_client)
    done = dlq(redis_server.url, "list")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["ID", "AGE", "REASON", "ACCOUNT", "MAILBOX", "UID", "MESSAGE-ID"]
    assert row.split()[0] == letter and "permanent" in row and "1764648151224" not in done.stdout
    shown = dlq(redis_server.url, "show", letter)
    assert shown.returncode == 0 and "first_failure: 2025-12-02T04:02:31.224" in shown.stdout
    assert re.search(f"dead_at: {ISO}", shown.stdout) and "1764648151224" not in shown.stdout


def test_json_is_accepted_after_the_subcommand(redis_server, redis_client):
    """`dlq stats --json` and `dlq --json stats` give the same JSON; options after it too."""
    add_letter(redis_client)
    after = dlq("redis://127.0.0.1:1/0", "stats", "--json", "--redis-url", redis_server.url)
    before = dlq(redis_server.url, "--json", "stats")
    assert after.returncode == 0 and before.returncode == 0, after.stderr
    assert json.loads(after.stdout)["by_reason"] == json.loads(before.stdout)["by_reason"] == {"permanent": 1}
    listed = json.loads(dlq(redis_server.url, "list", "--json").stdout)
    assert listed[0]["first_failure_ms"] == "1764648151224" and re.fullmatch(ISO, listed[0]["first_failure"])


def payload(i: int, account: str = "alice@example.com") -> str:
    return json.dumps({"account": account, "mailbox": "INBOX", "uid": i, "message_id": f"<m{i}@example.com>",
                       "idempotency_key": f"imap:{account}:INBOX:7:{i}", "subject": "secret subject"})


def test_list_filters_searches_and_never_prints_content(redis_server, redis_client):
    """`list --reason/--account/--search` narrow the table; subjects never appear; `show` finds a
    letter by the original stream id a worker's log line names."""
    for i, (reason, account) in enumerate([("permanent", "a@x.org"), ("max_retries", "b@x.org"),
                                           ("max_retries", "a@x.org")], start=1):
        redis_client.xadd(DLQ, {"payload": payload(i, account), "reason": reason, "original_id": f"{100 + i}-0"})
    by_reason = dlq(redis_server.url, "list", "--reason", "max_retries").stdout.splitlines()[1:]
    assert len(by_reason) == 2 and all("max_retries" in line for line in by_reason)
    both = dlq(redis_server.url, "list", "--reason", "max_retries", "--account", "a@x.org").stdout.splitlines()[1:]
    assert len(both) == 1 and "<m3@example.com>" in both[0]
    found = dlq(redis_server.url, "list", "--search", "m2@example").stdout.splitlines()[1:]
    assert len(found) == 1 and "b@x.org" in found[0]
    assert "secret subject" not in dlq(redis_server.url, "list").stdout
    shown = dlq(redis_server.url, "show", "102-0")
    assert shown.returncode == 0 and "message-id: <m2@example.com>" in shown.stdout and "secret" not in shown.stdout
    assert "secret subject" in dlq(redis_server.url, "show", "102-0", "--payload").stdout


def test_acting_on_many_letters_needs_yes_and_dry_run_changes_nothing(redis_server, redis_client):
    """replay/purge of more than one letter refuse without --yes (exit 1, nothing changed);
    --dry-run lists what would happen; with --yes the summary is short lines, not a repr."""
    for i in range(1, 31):
        redis_client.xadd(DLQ, {"payload": payload(i), "reason": "max_retries", "stream": "email_ingestion_stream"})
    refused = dlq(redis_server.url, "replay", "--all")
    assert refused.returncode == 1 and "add --yes" in refused.stderr and redis_client.xlen(DLQ) == 30
    dry = dlq(redis_server.url, "purge", "--reason", "max_retries", "--dry-run")
    assert dry.returncode == 0 and "30 dead letters would be purged" in dry.stdout and redis_client.xlen(DLQ) == 30
    done = dlq(redis_server.url, "replay", "--all", "--yes")
    assert done.returncode == 0 and done.stdout.startswith("replayed 30 of 30 dead letters")
    assert len(done.stdout.splitlines()) <= 23 and "{" not in done.stdout and "and 10 more" in done.stdout
    assert redis_client.xlen(DLQ) == 0 and redis_client.xlen("email_ingestion_stream") == 30
    one = redis_client.xadd(DLQ, {"payload": payload(99), "reason": "permanent"}).decode()
    single = dlq(redis_server.url, "purge", one)
    assert single.returncode == 0 and "purged 1 of 1" in single.stdout and redis_client.xlen(DLQ) == 0
