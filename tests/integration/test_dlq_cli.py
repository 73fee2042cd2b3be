"""The DLQ admin CLI's conventions: missing ids exit 1, ISO times, --json anywhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from email_ingestion.common.text import to_text
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


HOSTILE = "\x1b[2J\x1b[31mPWNED\x1b]0;title\x07\r\u202e\x9b1A"


def test_hostile_text_in_a_letter_reaches_the_terminal_only_as_visible_escapes(redis_server, redis_client):
    """A Message-ID, reason or error text holding ANSI/OSC sequences, C1 or bidi controls is
    printed escaped by list, show and stats (a stranger's mail cannot drive the terminal);
    an oversized error text is cut in `show`."""
    fields = {"payload": json.dumps({"account": "a" + HOSTILE, "mailbox": "INBOX" + HOSTILE, "uid": 1,
                                     "message_id": f"<m{HOSTILE}@x>"}),
              "reason": "permanent" + HOSTILE, "error_type": "E" + HOSTILE, "error_message": "bad" + HOSTILE + "y" * 50_000,
              "traceback": "Traceback\n" + HOSTILE, "consumer": "c" + HOSTILE, "original_id": "5-5"}
    letter = redis_client.xadd(DLQ, fields).decode()
    outputs = [dlq(redis_server.url, *args) for args in (("list",), ("show", letter), ("show", letter, "--payload"),
                                                          ("stats",), ("purge", "--all", "--dry-run"))]
    for done in outputs:
        assert done.returncode == 0, done.stderr
        assert not any(ch in done.stdout for ch in "\x1b\x07\r\x9b\u202e"), done.stdout[:300]
        assert "\\x1b[2J" in done.stdout
    assert len(outputs[1].stdout) < 10_000 and "more characters" in outputs[1].stdout


def payloads_of(size_bytes: int, count: int, client) -> list[str]:
    ids = []
    for i in range(count):
        body = json.dumps({"account": "a@x.org", "uid": i, "message_id": f"<big{i}@x>", "body": "x" * size_bytes})
        ids.append(client.xadd(DLQ, {"payload": body, "reason": "max_retries", "original_id": f"{1000 + i}-0",
                                     "stream": "email_ingestion_stream"}).decode())
    return ids


def sent_bytes(client) -> int:
    return int(client.info("stats")["total_net_output_bytes"])


def test_show_and_replay_by_dlq_id_read_only_that_letter(redis_server, redis_client):
    """`show ID` and `replay ID` of a DLQ id fetch that one letter, not the whole DLQ (200
    letters of 50 KB here: 10 MB): what Redis sends stays under 1 MB."""
    ids = payloads_of(50_000, 200, redis_client)
    before = sent_bytes(redis_client)
    assert dlq(redis_server.url, "show", ids[100]).returncode == 0
    assert dlq(redis_server.url, "replay", ids[150]).returncode == 0
    assert sent_bytes(redis_client) - before < 1_000_000
    assert redis_client.xlen(DLQ) == 199 and redis_client.xlen("email_ingestion_stream") == 1


def test_a_filter_needs_yes_even_when_it_matches_one_letter(redis_server, redis_client):
    """`purge --all` / `replay --reason R` pick whatever matches now: they need --yes even for
    one letter (nothing changes, exit 1); one letter named by its id does not."""
    letter = redis_client.xadd(DLQ, {"payload": payload(1), "reason": "permanent",
                                     "stream": "email_ingestion_stream"}).decode()
    for args in (("purge", "--all"), ("replay", "--reason", "permanent"), ("purge", "--older-than", "0s")):
        refused = dlq(redis_server.url, *args)
        assert refused.returncode == 1 and "add --yes" in refused.stderr and redis_client.xlen(DLQ) == 1
    done = dlq(redis_server.url, "replay", letter)
    assert done.returncode == 0 and redis_client.xlen(DLQ) == 0 and redis_client.xlen("email_ingestion_stream") == 1


def test_ids_in_no_dlq_are_named_and_the_others_acted_on(redis_server, redis_client):
    """`replay GOOD 9-9 nonsense`: the unknown ids are named on stderr, exit 1, the known one
    is replayed (once); --dry-run names them too and changes nothing."""
    good = redis_client.xadd(DLQ, {"payload": payload(1), "reason": "permanent",
                                   "stream": "email_ingestion_stream"}).decode()
    dry = dlq(redis_server.url, "replay", good, "9-9", "nonsense", "--dry-run")
    assert dry.returncode == 1 and "no dead letter 9-9" in dry.stderr and "no dead letter nonsense" in dry.stderr
    assert redis_client.xlen(DLQ) == 1
    done = dlq(redis_server.url, "replay", good, "9-9", "nonsense", "--yes")
    assert done.returncode == 1 and "no dead letter 9-9" in done.stderr and "replayed 1 of 1" in done.stdout
    assert redis_client.xlen(DLQ) == 0 and redis_client.xlen("email_ingestion_stream") == 1


def test_two_operators_replaying_at_once_replay_each_letter_once(redis_server, redis_client):
    """Two `replay --all --yes` at the same time: every letter lands on the stream exactly
    once (the move is one Lua step that checks the letter is still there)."""
    for i in range(300):
        redis_client.xadd(DLQ, {"payload": payload(i), "reason": "max_retries", "stream": "email_ingestion_stream"})
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_server.url}
    cmd = [sys.executable, "-m", "email_ingestion.worker.dlq_admin", "replay", "--all", "--yes", "--json"]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert sum(len(r["replayed"]) for r in results) == 300
    replayed_from = [to_text(f[b"replayed_from"]) for _, f in redis_client.xrange("email_ingestion_stream")]
    assert len(replayed_from) == len(set(replayed_from)) == 300 and redis_client.xlen(DLQ) == 0


SKEWED = ("import sys, time; real = time.time; time.time = lambda: real() + 30 * 86400; "
          "from email_ingestion.worker.dlq_admin import main; sys.exit(main(sys.argv[1:]))")


def test_ages_are_measured_by_redis_clock_not_a_skewed_host(redis_server, redis_client):
    """On a host whose clock runs 30 days ahead, a letter dead-lettered just now is not
    `--older-than 7d` (nothing purged) and is listed by `--since 1h`."""
    redis_client.xadd(DLQ, {"payload": payload(1), "reason": "permanent"})
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_server.url}

    def skewed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", SKEWED, *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    purge = skewed("purge", "--older-than", "7d", "--yes")
    assert purge.returncode == 0 and redis_client.xlen(DLQ) == 1, purge.stdout + purge.stderr
    listed = skewed("list", "--since", "1h")
    assert "permanent" in listed.stdout


def test_a_letter_replay_cannot_move_is_named_and_stays(redis_server, redis_client):
    """A malformed letter (no payload) asked to be replayed: exit 1, named on stderr with why,
    still in the DLQ; nothing reached the stream."""
    letter = redis_client.xadd(DLQ, {"reason": "permanent", "stream": "email_ingestion_stream"}).decode()
    done = dlq(redis_server.url, "replay", letter)
    assert done.returncode == 1 and f"{letter} not replayed" in done.stderr and "replayed 0 of 1" in done.stdout
    assert redis_client.xlen(DLQ) == 1 and redis_client.xlen("email_ingestion_stream") == 0
