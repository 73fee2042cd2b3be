"""The overview's figures from real runs: each mailbox's owner, state and sync progress as the
producer reports them, and the per-minute flow the workers record."""

from __future__ import annotations

import signal
import subprocess
import threading
from typing import Any

import pytest

from email_ingestion.common.keys import MailboxKeys, StreamKeys
from email_ingestion.console.overview import _state
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sample_payloads import add_payloads
from email_ingestion.worker.cli import build_worker
from tests.conftest import USER, producer_cmd
from tests.console.conftest import STREAM, VIEWER
from tests.support.waits import wait_until

GROUP = "email_processor_group"


def activity(client: Any, mailbox: str) -> dict[str, str]:
    raw = client.hgetall(MailboxKeys(STREAM, USER, mailbox).activity)
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_sync_reports_progress_then_idle(mailbox, producer_env, redis_client):
    """A producer's pass records `syncing` then `idle`, naming itself; the overview's progress comes from the progress key."""
    mailbox.append(*[sample_message(i) for i in range(5)])
    done = subprocess.run(producer_cmd("--once"), env={**producer_env, "PRODUCER_ID": "p-test"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert activity(redis_client, mailbox.name) == {"state": "idle", "detail": "", "producer": "p-test"}


def test_refused_credentials_are_reported(mailbox, producer_env, redis_client):
    """A producer whose login is refused records the state `credentials` before it exits."""
    env = {**producer_env, "IMAP_PASSWORD": "wrong-password", "PRODUCER_ID": "p-bad"}
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    found = activity(redis_client, mailbox.name)
    assert found["state"] == "credentials" and found["producer"] == "p-bad" and "Error" in found["detail"]


def test_overview_shows_owner_state_and_progress(mailbox, producer_env, redis_client, as_user):
    """With a producer running, the overview names it as the mailbox's owner, idle, 3/3 synced,
    and lists it among the live producers."""
    mailbox.append(*[sample_message(i) for i in range(3)])
    # An hourly poll: no periodic pass can turn the state to "syncing" between the wait and the read.
    proc = subprocess.Popen(producer_cmd(), env={**producer_env, "PRODUCER_ID": "p-live", "POLL_INTERVAL_SECONDS": "3600"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        keys = MailboxKeys(STREAM, USER, mailbox.name)
        assert wait_until(lambda: redis_client.exists(keys.lease) and activity(redis_client, mailbox.name).get("state")
                          == "idle", timeout_s=60)
        page = as_user(VIEWER).get("/").get_data(as_text=True)
        row = page.split(mailbox.name, 1)[1].split("</tr>", 1)[0]
        assert "p-live" in row and "state-idle" in row and "3/3 (100%)" in row
        assert "p-live" in page.split("<h2>Producers</h2>", 1)[1].split("<h2>", 1)[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""


@pytest.mark.parametrize(("owned", "stored", "progress", "expected"), [
    (False, {"state": "syncing"}, {"done": 5, "total": 9}, ("unowned", None, None)),
    (True, {}, None, ("idle", None, None)),
    (True, {"state": "syncing"}, {"done": 5, "total": 10, "rate_per_s": 2.5, "eta_s": 2.0},
     ("syncing", None, "5/10 (50%), 2.5/s, 2s left")),
    (True, {"state": "idle"}, {"done": 10, "total": 10, "rate_per_s": 2.5, "eta_s": 0}, ("idle", None, "10/10 (100%)")),
    (True, {"state": "backing off", "detail": "ImapConnectionError"}, {"done": 0, "total": 0},
     ("backing off", "ImapConnectionError", None)),
    (True, {"state": "quota", "detail": "ImapThrottledError"}, None, ("quota", "ImapThrottledError", None)),
])
def test_state_from_lease_and_activity(owned, stored, progress, expected):
    """The state shown: unowned without a lease, else what the owner reports (idle when it reports nothing),
    with the progress key's figures (rate and time left while syncing)."""
    shown = _state(owned, stored, progress)
    assert (shown["state"], shown["state_detail"], shown["first_sync"]) == expected


def test_workers_record_the_minute_flow(redis_server, redis_client, monkeypatch, as_user):
    """A worker run adds its handled count and arrival-to-done latency to the minute's flow hash; the overview sums them."""
    add_payloads(redis_client, 12)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("WORKER_BLOCK_TIMEOUT_MS", "100")
    monkeypatch.setenv("WORKER_METRICS_PORT", "0")
    from email_ingestion.common.settings import load_settings
    stop = threading.Event()
    worker = build_worker(load_settings(env_file=None), "w-flow", stop)
    worker.processor.handler = lambda payload, ctx: None
    worker.run(burst=True)
    keys = StreamKeys(stream=STREAM, group=GROUP)
    flows = [redis_client.hgetall(k) for k in redis_client.scan_iter(match=keys.flow(0)[:-1] + "*")]
    assert sum(int(f[b"handled"]) for f in flows) == 12 and sum(int(f[b"timed"]) for f in flows) == 12
    assert all(0 < redis_client.ttl(k) <= 7200 for k in redis_client.scan_iter(match=keys.flow(0)[:-1] + "*"))
    assert "12 messages handled" in as_user(VIEWER).get("/").get_data(as_text=True)


def test_overview_lists_every_worker_stream(console, redis_client):
    """With WORKER_STREAMS naming several streams the overview shows each one's length and the mailboxes feeding it."""
    import dataclasses

    from email_ingestion.console.app import create_app
    from tests.console.conftest import ADMIN, ADMIN_PW, login
    add_payloads(redis_client, 2, stream="mail-b")
    redis_client.hset(MailboxKeys("mail-b", "bob@example.com", "INBOX").state, mapping={"uidvalidity": 1, "last_uid": 2})
    app = create_app(dataclasses.replace(console, streams=(STREAM, "mail-b")))
    client = app.test_client()
    assert login(client, ADMIN, ADMIN_PW).status_code == 302
    page = client.get("/").get_data(as_text=True)
    streams = page.split('id="streams"', 1)[1].split("</table>", 1)[0]
    assert "mail-b" in streams and STREAM in streams
    assert "bob@example.com" in page.split('id="mailboxes"', 1)[1].split("</table>", 1)[0]


def test_a_failing_connection_is_reported_as_backing_off(mailbox, producer_env, redis_client):
    """A producer whose IMAP connection fails records `backing off` with the error's class (no server text)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the producer connects: refused
    env = {**producer_env, "IMAP_PORT": str(port), "PRODUCER_ID": "p-off"}
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    found = activity(redis_client, mailbox.name)
    assert found["state"] == "backing off" and found["producer"] == "p-off" and found["detail"].endswith("Error"), found


def test_many_mailboxes_list_the_troubled_first(redis_client, as_user, monkeypatch):
    """With more mailboxes than the table holds, unowned ones come first, every state is counted,
    and the page says how many are not listed."""
    from email_ingestion.console import overview as module
    monkeypatch.setattr(module, "MAX_MAILBOX_ROWS", 3)
    for i in range(5):
        keys = MailboxKeys(STREAM, f"u{i}@example.com", "INBOX")
        redis_client.hset(keys.state, mapping={"uidvalidity": 1, "last_uid": i})
        if i != 4:
            redis_client.set(keys.lease, f"p1:{i + 1}", px=60_000)
    page = as_user(VIEWER).get("/").get_data(as_text=True)
    table = page.split('id="mailboxes"', 1)[1].split("</table>", 1)[0]
    assert table.index("u4@example.com") < table.index("u0@example.com") and "u3@example.com" not in table
    states = page.split('id="mailbox-states"', 1)[1].split("</p>", 1)[0]
    assert "unowned</span> 1" in states and "idle</span> 4" in states and "2 more are not" in states
