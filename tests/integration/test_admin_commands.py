"""`email-ingest status`, `tail`, `consumers prune` and `exporter` against a real Redis, a
real producer (Dovecot) and real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.admin.consumers import _PRUNE
from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sample_payloads import add_payloads
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import ROOT, producer_cmd
from tests.support.waits import wait_until

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
KEYS = StreamKeys(stream=STREAM, group=GROUP)


def clean_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAP_", "REDIS_", "GOOGLE_", "WORKER_"))}
    return {**env, "REDIS_URL": redis_url, **extra}


def ingest(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "email_ingestion", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def status_json(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = ingest(env, "status", "--json")
    return done.returncode, json.loads(done.stdout)


def start_worker(env: dict[str, str], name: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler", "noop", *args],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_status_reports_a_healthy_installation_then_why_it_degrades(mailbox, producer_env, redis_server, redis_client):
    """With a running producer and a live worker, status exits 0 with every figure, the
    mailbox's owner among the live producers; stopping the producer, the worker and a fresh
    dead letter make it exit 1, each reason named."""
    mailbox.append(sample_message(1), sample_message(2))
    producer = subprocess.Popen(producer_cmd(), env={**producer_env, "PRODUCER_ID": "prod-a"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = clean_env(redis_server.url)
    worker = start_worker(env, "w-status")
    try:
        # Healthy, and the producer has stored the mailbox's position (status may be healthy
        # a moment before the first state write, with no mailbox to list yet).
        assert wait_until(lambda: (lambda got: got[0] == 0 and got[1]["mailboxes"])(status_json(env)),
                          timeout_s=60), ingest(env, "status").stdout
        code, snap = status_json(env)
        [box] = snap["mailboxes"]
        assert (box["account"], box["mailbox"], box["last_uid"]) == ("alice@example.com", mailbox.name, 2)
        assert box["uidvalidity"] == mailbox.uidvalidity() and box["last_sync"].endswith("Z")
        assert box["backpressure"] is False and box["owner"] == "prod-a" and box["owner_alive"] is True
        assert [p["id"] for p in snap["producers"]] == ["prod-a"]
        group = snap["stream"]["groups"][GROUP]
        assert snap["stream"]["length"] == 2 and group["lag"] == 0 and group["pending"] == 0
        assert snap["stream"]["rate"]["appended_last_minute"] == 2
        assert [w["name"] for w in snap["workers"]["live"]] == ["w-status"]
        assert snap["retries"]["scheduled"] == 0 and snap["dlq"]["size"] == 0 and snap["problems"] == []
        text = ingest(env, "status")
        assert text.returncode == 0 and "status: healthy" in text.stdout and "owner=prod-a" in text.stdout
        assert "producers: 1 alive (prod-a)" in text.stdout
    finally:
        producer.send_signal(signal.SIGTERM)
        assert producer.wait(30) == 0
        assert stop(worker) == 0
    redis_client.xadd(DLQ, {"payload": "{}", "reason": "max_retries"})
    done = ingest(env, "status")
    assert done.returncode == 1 and "status: DEGRADED" in done.stdout
    assert "no live producer" in done.stdout and "no live worker" in done.stdout
    assert "dead letters growing: 1 in the last hour" in done.stdout
    assert "w-status: pending=0" in done.stdout and "stale" in done.stdout


def test_an_old_dead_letter_is_a_note_and_a_growing_dlq_a_problem(redis_server, redis_client):
    """A dead letter older than an hour does not keep status DEGRADED forever (a note, exit 0
    as far as the DLQ goes); one that arrived within the hour is a problem."""
    now_ms = int(redis_client.time()[0]) * 1000
    redis_client.xadd(DLQ, {"payload": "{}", "reason": "max_retries"}, id=f"{now_ms - 30 * 86_400_000}-0")
    add_payloads(redis_client, 1)
    redis_client.xgroup_create(STREAM, GROUP, id="$")
    env = clean_env(redis_server.url)
    worker = start_worker(env, "w-dlq-note")
    try:
        assert wait_until(lambda: status_json(env)[0] == 0, timeout_s=60), ingest(env, "status").stdout
        code, snap = status_json(env)
        assert snap["dlq"]["growing"] is False and any("old dead letters" in n for n in snap["notes"])
        text = ingest(env, "status").stdout
        assert "note: 1 old dead letters, none in the last hour (newest 30d ago" in text
        redis_client.xadd(DLQ, {"payload": "{}", "reason": "handler_error"})
        code, snap = status_json(env)
        assert code == 1 and any("dead letters growing" in p for p in snap["problems"])
    finally:
        assert stop(worker) == 0


def test_a_mailbox_whose_owner_died_is_a_problem(redis_server, redis_client):
    """A mailbox whose lease names a producer that is no longer registered is not followed: named as a problem."""
    from email_ingestion.common.keys import MailboxKeys, producers_key
    keys = MailboxKeys(stream=STREAM, account="a@example.com", mailbox="INBOX")
    redis_client.hset(keys.state, mapping={"uidvalidity": 1, "last_uid": 3, "updated_at_ms": 1})
    now_ms = int(redis_client.time()[0]) * 1000
    redis_client.zadd(producers_key("fleet-x"), {"alive-1": now_ms + 60_000})
    redis_client.set(keys.lease, "gone-1:7", px=60_000)
    code, snap = status_json(clean_env(redis_server.url))
    assert code == 1
    assert any("mailboxes no live producer owns" in p and "a@example.com INBOX" in p for p in snap["problems"])
    assert snap["mailboxes"][0]["owner"] == "gone-1" and snap["mailboxes"][0]["owner_alive"] is False


def test_status_sees_oldest_unacked_age_and_dead_consumers(redis_server, redis_client):
    """Entries held by a consumer without a heartbeat show up under that consumer, with the
    age of the oldest unacknowledged entry measured on Redis's clock."""
    add_payloads(redis_client, 3)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "crashed-1", {STREAM: ">"}, count=2)
    code, snap = status_json(clean_env(redis_server.url))
    assert code == 1
    group = snap["stream"]["groups"][GROUP]
    assert group["pending"] == 2 and group["lag"] == 1 and group["oldest_unacked_age_s"] >= 0
    [dead] = snap["workers"]["dead_with_pending"]
    assert dead["name"] == "crashed-1" and dead["pending"] == 2


def test_status_bad_configuration_exits_2_and_redis_down_exits_1(tmp_path):
    """A bad setting is exit 2 with one line; an unreachable Redis is exit 1 with the reason."""
    bad = ingest(clean_env("redis://127.0.0.1:1/0", REDIS_SOCKET_TIMEOUT_SECONDS="zero"), "status")
    assert bad.returncode == 2 and "REDIS_SOCKET_TIMEOUT_SECONDS" in bad.stderr and len(bad.stderr.splitlines()) == 1
    missing = ingest(clean_env("redis://127.0.0.1:1/0"), "status", "--env-file", str(tmp_path / "nope.env"))
    assert missing.returncode == 2 and "--env-file" in missing.stderr
    down = ingest(clean_env(f"redis://127.0.0.1:{free_port()}/0", REDIS_SOCKET_TIMEOUT_SECONDS="1"), "status")
    assert down.returncode == 1 and "Redis unreachable" in down.stdout


def test_status_reads_the_env_file_the_services_read(tmp_path, redis_server, redis_client):
    """REDIS_URL from EMAIL_INGEST_ENV_FILE reaches status, run from another directory."""
    (tmp_path / "ingest.env").write_text(f"REDIS_URL={redis_server.url}\nREDIS_STREAM_NAME=other\n")
    add_payloads(redis_client, 1, stream="other")
    env = clean_env("redis://127.0.0.1:1/0", EMAIL_INGEST_ENV_FILE=str(tmp_path / "ingest.env"))
    env.pop("REDIS_URL")
    done = subprocess.run([sys.executable, "-m", "email_ingestion", "status", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["stream"]["length"] == 1, done.stderr


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_fresh_idle_worker_counts_as_active(redis_server, redis_client):
    """A worker blocked on an empty stream (Redis 7.0 lists no such consumer) is one active
    worker in the exporter's gauge and in status; stopping it brings both to zero."""
    env = clean_env(redis_server.url)
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "email_ingestion", "exporter", "--port", str(port)], env=env,
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = start_worker(env, "idle-1")
    try:
        assert wait_until(lambda: metric(port, "email_ingestion_active_workers") == 1.0, timeout_s=30)
        assert [w["name"] for w in status_json(env)[1]["workers"]["live"]] == ["idle-1"]
        assert stop(worker) == 0
        assert wait_until(lambda: metric(port, "email_ingestion_active_workers") == 0.0, timeout_s=30)
        assert metric(port, "email_ingestion_redis_memory_used_bytes") > 0
        assert metric(port, "email_ingestion_redis_memory_max_bytes") is not None
    finally:
        worker.kill()
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(20) == 0


def test_exporter_shows_the_backlog_while_no_service_runs(redis_server, redis_client):
    """With no producer and no worker, the exporter alone exports depth, lag and DLQ depth."""
    add_payloads(redis_client, 7)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xadd(DLQ, {"payload": "{}", "reason": "permanent"})
    redis_client.config_set("maxmemory", "64mb")
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "email_ingestion", "exporter", "--port", str(port)],
                                env=clean_env(redis_server.url), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: metric(port, "email_ingestion_consumer_lag") == 7.0, timeout_s=30)
        assert metric(port, "email_ingestion_stream_depth") == 7.0 and metric(port, "email_ingestion_dlq_depth") == 1.0
        assert metric(port, "email_ingestion_redis_memory_max_bytes") == 64 * 1024 * 1024
    finally:
        redis_client.config_set("maxmemory", "0")
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(20)


def test_tail_hides_people_unless_asked(redis_server, redis_client):
    """tail prints uid, sender domain and subject length; addresses and subjects only with --show-content."""
    add_payloads(redis_client, 5)
    env = clean_env(redis_server.url)
    done = ingest(env, "tail", "--count", "2")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2 and "uid=3" in lines[0] and "uid=4" in lines[1]
    assert "from_domain=example.org" in lines[1] and "subject_chars=9" in lines[1]
    assert "s4@example.org" not in done.stdout and "Report #4" not in done.stdout
    shown = ingest(env, "tail", "--count", "1", "--show-content").stdout
    assert "from=s4@example.org" in shown and "Report #4" in shown


def test_tail_follow_prints_new_entries_until_stopped(tmp_path, redis_server, redis_client):
    """tail --follow prints entries added after it started, and SIGTERM ends it with 0."""
    add_payloads(redis_client, 1)
    out = tmp_path / "tail.out"
    with open(out, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "email_ingestion", "tail", "--follow", "--count", "1"],
                                env=clean_env(redis_server.url), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "uid=0" in out.read_text(), timeout_s=30)
        add_payloads(redis_client, 2, start=1)
        assert wait_until(lambda: "uid=2" in out.read_text(), timeout_s=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert [line.split(" uid=")[1].split()[0] for line in out.read_text().splitlines()] == ["0", "1", "2"]


def test_tail_follow_prints_entries_added_while_the_listing_was_printed(tmp_path, redis_server, redis_client):
    """tail --follow goes on from the last entry it listed: entries added between the
    listing and the follow (here, while a slow link holds tail's next command) are printed."""
    add_payloads(redis_client, 1)
    out = tmp_path / "tail.out"
    proxy = TcpProxy(redis_server.port, delay_s=0.5).start()
    try:
        with open(out, "w") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "email_ingestion", "tail", "--follow", "--count", "1"],
                                    env=clean_env(f"redis://127.0.0.1:{proxy.port}/0"), cwd=ROOT, stdout=handle,
                                    stderr=subprocess.STDOUT)
        try:
            assert wait_until(lambda: "uid=0" in out.read_text(), timeout_s=60)
            add_payloads(redis_client, 2, start=1)  # tail's next command is still on the slow link
            assert wait_until(lambda: "uid=2" in out.read_text(), timeout_s=60), out.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        proxy.stop()
    assert [line.split(" uid=")[1].split()[0] for line in out.read_text().splitlines()] == ["0", "1", "2"]


def test_prune_deletes_only_dead_idle_empty_consumers(redis_server, redis_client):
    """Dead with nothing pending: deleted. Dead holding entries, or alive: kept, entries still pending."""
    add_payloads(redis_client, 2)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "dead-holding", {STREAM: ">"}, count=1)
    for name in ("dead-empty-1", "dead-empty-2", "alive-empty"):
        redis_client.xgroup_createconsumer(STREAM, GROUP, name)
    redis_client.set(KEYS.heartbeat("alive-empty"), "1", px=60_000)
    env = clean_env(redis_server.url)
    dry = ingest(env, "consumers", "prune", "--idle-over", "0s", "--dry-run")
    assert dry.stdout.count("would delete") == 2
    done = ingest(env, "consumers", "--json", "prune", "--idle-over", "0s")
    assert done.returncode == 0, done.stderr
    assert sorted(r["name"] for r in json.loads(done.stdout) if r["outcome"] == "deleted") == ["dead-empty-1", "dead-empty-2"]
    left = {c["name"].decode(): c["pending"] for c in redis_client.xinfo_consumers(STREAM, GROUP)}
    assert left == {"dead-holding": 1, "alive-empty": 0}
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 1
    assert "nothing to prune" in ingest(env, "consumers", "prune", "--idle-over", "1d").stdout


def test_prune_rechecks_on_the_server(redis_server, redis_client):
    """A consumer that received an entry or a heartbeat after it was listed is not deleted
    (XGROUP DELCONSUMER would drop its pending entries for good)."""
    add_payloads(redis_client, 1)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xgroup_createconsumer(STREAM, GROUP, "late")
    script = redis_client.register_script(_PRUNE)
    redis_client.xreadgroup(GROUP, "late", {STREAM: ">"}, count=1)  # after the listing, before the delete
    assert script(keys=[STREAM, KEYS.heartbeat("late")], args=[GROUP, "late", 0]) == -2
    redis_client.set(KEYS.heartbeat("late"), "1", px=60_000)
    assert script(keys=[STREAM, KEYS.heartbeat("late")], args=[GROUP, "late", 0]) == -1
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 1


def test_email_ingest_lists_the_operator_commands():
    """`email-ingest --help` names every subcommand, and each answers --help."""
    done = subprocess.run([str(Path(sys.executable).parent / "email-ingest"), "--help"], capture_output=True, text=True,
                          timeout=30)
    for name in ("status", "tail", "consumers", "exporter", "producer", "worker", "dlq"):
        assert name in done.stdout
        assert ingest(os.environ.copy(), name, "--help").returncode == 0


@pytest.fixture(autouse=True)
def _no_maxmemory_left(redis_client):
    yield
    redis_client.config_set("maxmemory", "0")


def test_status_names_each_degradation(redis_server, redis_client):
    """Orphans past the claim time, backpressure and overdue retries each become a problem line
    (settings as the services would read them: short claim time, small stream limit)."""
    add_payloads(redis_client, 3)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "crashed-2", {STREAM: ">"}, count=3)
    redis_client.set(KEYS.heartbeat("alive"), "1", px=60_000)
    seconds, _ = redis_client.time()
    redis_client.zadd(KEYS.retries, {"r1": (int(seconds) - 600) * 1000})
    env = clean_env(redis_server.url, CLAIM_MIN_IDLE_MS="0", HEARTBEAT_TTL_MS="100", REDIS_MAX_STREAM_LENGTH="3")
    assert wait_until(lambda: "dead consumers" in ingest(env, "status").stdout, timeout_s=10)
    done = ingest(env, "status")
    assert done.returncode == 1
    assert "entries held by dead consumers past the claim time (0.2s), not reclaimed: crashed-2 (3)" in done.stdout
    assert "backpressure: 3 unacknowledged entries >= REDIS_MAX_STREAM_LENGTH 3" in done.stdout
    assert "retries overdue by" in done.stdout and "no live worker" not in done.stdout
    assert "retries: 1 scheduled, next due" in done.stdout


def test_tools_print_for_people_unless_asked_for_json(mailbox, producer_env, redis_server, redis_client):
    """`mailbox show` prints ISO instants (JSON only with --json), `consumers` human idle times,
    `producer --help` names itself as typed, and the exporter says where it listens."""
    mailbox.append(sample_message(1))
    assert subprocess.run(producer_cmd("--once"), env=producer_env, capture_output=True, timeout=60).returncode == 0
    show = ingest(producer_env, "mailbox", "show", "--account", "alice@example.com", "--mailbox", mailbox.name)
    assert show.returncode == 0 and "last_uid: 1" in show.stdout and "updated_at: 20" in show.stdout
    assert not show.stdout.lstrip().startswith("{") and "_ms" not in show.stdout
    as_json = ingest(producer_env, "mailbox", "show", "--json", "--account", "alice@example.com", "--mailbox", mailbox.name)
    assert json.loads(as_json.stdout)["position"]["last_uid"] == 1
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c-1", {STREAM: ">"}, count=1)
    listing = ingest(clean_env(redis_server.url), "consumers")
    assert "name=c-1" in listing.stdout and "idle=" in listing.stdout and "idle_ms" not in listing.stdout
    helped = ingest(clean_env(redis_server.url), "producer", "--help")
    assert helped.stdout.startswith("usage: email-ingest producer")
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "email_ingestion", "exporter", "--port", str(port)],
                                env=clean_env(redis_server.url), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert exporter.stdout is not None
        assert f"listening on http://127.0.0.1:{port}/metrics" in exporter.stdout.readline()
    finally:
        exporter.terminate()
        exporter.wait(30)


def test_status_reads_a_bounded_amount_of_a_busy_stream_and_a_huge_dlq(redis_server, redis_client):
    """400 entries of 50 KB appended within the minute and 1,000 dead letters of 20 KB (40 MB
    in all): two status calls (text, JSON) have Redis send under 30 MB (was 120), estimate the rate, count
    the reasons of the newest letters and say `email-dlq stats` counts all."""
    body, pipe = "x" * 50_000, redis_client.pipeline(transaction=False)
    for i in range(400):
        pipe.xadd(STREAM, {"payload": json.dumps({"uid": i, "body": body})})
    for i in range(1000):
        pipe.xadd(DLQ, {"payload": json.dumps({"uid": i, "body": body[:20_000]}), "reason": "max_retries"})
    pipe.execute()
    env = clean_env(redis_server.url)
    before = int(redis_client.info("stats")["total_net_output_bytes"])
    text, (code, snap) = ingest(env, "status"), status_json(env)
    assert code == text.returncode == 1
    assert int(redis_client.info("stats")["total_net_output_bytes"]) - before < 30_000_000
    assert snap["stream"]["rate"]["estimated"] is True and snap["stream"]["rate"]["per_s"] > 400 / 60
    assert snap["dlq"]["size"] == 1000 and snap["dlq"]["growing"] is True and snap["dlq"]["last_hour_at_least"]
    assert "dead letters growing: 100+ in the last hour, 1000 in all" in text.stdout
    assert "`email-dlq stats` counts all" in text.stdout


def test_status_with_thousands_of_mailboxes_stays_a_screen(redis_server, redis_client):
    """3,000 mailboxes, 1,000 of them not owned by the live producer: the text names 10 in the
    problem with the count, shows at most 50 mailbox lines (unfollowed first); --json has all."""
    from email_ingestion.common.keys import MailboxKeys, producers_key
    now_ms = int(redis_client.time()[0]) * 1000
    pipe = redis_client.pipeline(transaction=False)
    for i in range(3000):
        keys = MailboxKeys(stream=STREAM, account=f"user{i}@example.com", mailbox="INBOX")
        pipe.hset(keys.state, mapping={"uidvalidity": 1, "last_uid": i, "updated_at_ms": now_ms})
        if i % 3:
            pipe.set(keys.lease, "prod-x:1", px=120_000)
    pipe.zadd(producers_key("default"), {"prod-x": now_ms + 120_000})
    pipe.execute()
    env = clean_env(redis_server.url)
    text = ingest(env, "status").stdout
    assert len(text.splitlines()) < 80 and "and 990 more (1000 in all)" in text
    assert "2950 more (3000 mailboxes, 2000 followed" in text and "user0@example.com INBOX: owner=NONE" in text
    code, snap = status_json(env)
    assert len(snap["mailboxes"]) == 3000 and sum(b["owner_alive"] for b in snap["mailboxes"]) == 2000


def test_watch_into_a_pipe_redraws_without_escapes_and_ends_on_ctrl_c(redis_server, redis_client):
    """`status --watch 0.2 | reader`: plain blocks (no screen-clearing escapes in a pipe), and
    SIGINT ends it with the last answer's status and no traceback; --watch 0 is refused."""
    env = clean_env(redis_server.url)
    # Ctrl-C as at a terminal: a suite run as a background job (`make test &`, some CI
    # runners) hands its children SIGINT ignored, and Python then never raises
    # KeyboardInterrupt (the watch ran on until the 30 s wait ended).
    proc = subprocess.Popen([sys.executable, "-m", "email_ingestion", "status", "--watch", "0.2"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None and proc.stderr is not None
    seen = []
    while len([line for line in seen if line.startswith("status: ")]) < 2:
        seen.append(proc.stdout.readline())
        assert seen[-1], proc.stderr.read()  # it ended before two answers
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "Traceback" not in err and "\x1b" not in "".join(seen) + rest
    refused = ingest(env, "status", "--watch", "0")
    assert refused.returncode == 2 and "positive" in refused.stderr


def test_consumers_before_any_worker_says_so_in_one_line(redis_server, redis_client):
    """`consumers` on a stream with no group yet: one line saying no worker has started, exit 1
    (not redis-py's NOGROUP reply)."""
    add_payloads(redis_client, 1)
    done = ingest(clean_env(redis_server.url), "consumers")
    assert done.returncode == 1 and done.stderr.strip() == (
        f"consumers: no consumer group {GROUP} on {STREAM} yet: no worker has started")
