"""/health, /ready, /status and /metrics of real producer and worker processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT, producer_cmd

pytestmark = pytest.mark.slow


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_for(port: int, path: str, predicate, timeout_s: float = 30) -> tuple[int, str]:
    deadline = time.monotonic() + timeout_s
    answer = (0, "")
    while time.monotonic() < deadline:
        answer = get(port, path)
        if predicate(answer):
            return answer
        time.sleep(0.1)
    return answer


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_producer_endpoints(mailbox, producer_env, redis_client):
    """A producer serves /ready, /health, /status sync figures, /metrics names, and 404 elsewhere."""
    mailbox.append(sample_message(1), sample_message(2))
    port = free_port()
    proc = subprocess.Popen(producer_cmd(), env={**producer_env, "PRODUCER_METRICS_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code, body = wait_for(port, "/ready", lambda a: a[0] == 200)
        assert code == 200 and json.loads(body)["ready"] is True
        assert get(port, "/health")[0] == 200
        # /ready is 200 as soon as the session is up, which can be before the first pass has
        # stored its position: wait for the pass instead of assuming it is done.
        _, body = wait_for(port, "/status", lambda a: a[0] == 200 and json.loads(a[1]).get("last_uid") == 2
                           and bool(json.loads(a[1]).get("last_successful_sync")))
        status = json.loads(body)
        assert status["component"] == "producer" and status["last_uid"] == 2 and status["imap_connected"]
        assert status["counters"]["emitted"] == 2 and status["last_successful_sync"]
        assert status["circuit_breakers"]["imap"]["state"] == "closed"
        assert status["stream"]["stream_depth"] == 2 and status["version"]
        metrics = get(port, "/metrics")[1]
        for name in ("email_ingestion_emails_produced_total", "email_ingestion_imap_polls_total",
                     "email_ingestion_imap_poll_duration_seconds_bucket", "email_ingestion_stream_depth",
                     "email_ingestion_circuit_breaker_state", "email_ingestion_uptime_seconds",
                     "email_ingestion_build_info", "email_ingestion_uidvalidity_changes_total"):
            assert name in metrics, name
        assert get(port, "/nope")[0] == 404
    finally:
        assert stop(proc) == 0


def test_producer_not_ready_while_imap_is_down_but_alive(producer_env, redis_client):
    """With IMAP unreachable the breaker opens: /ready 503, /health 200, recent errors in /status."""
    port = free_port()
    env = {**producer_env, "PRODUCER_METRICS_PORT": str(port), "IMAP_PORT": str(free_port()),
           "HEALTH_BREAKER_FAILURES": "1"}
    proc = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code, body = wait_for(port, "/status", lambda a: a[0] == 200 and
                              json.loads(a[1]).get("circuit_breakers", {}).get("imap", {}).get("state") == "open")
        assert json.loads(body)["recent_errors"], body
        assert get(port, "/ready")[0] == 503
        assert get(port, "/health")[0] == 200, "backing off is not being stuck"
        assert 'email_ingestion_circuit_breaker_state{component="producer",name="imap"} 2.0' in get(port, "/metrics")[1]
    finally:
        assert stop(proc) == 0


def test_worker_endpoints(redis_server, redis_client):
    """A running worker serves /ready, /health, /status figures and /metrics with its processed count."""
    add_payloads(redis_client, 5)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "WORKER_METRICS_PORT": str(port),
           "WORKER_BLOCK_TIMEOUT_MS": "200"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "hw", "--handler", "noop"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "/status", lambda a: a[0] == 200 and json.loads(a[1])["counters"]["processed"] == 5)
        assert get(port, "/ready")[0] == 200 and get(port, "/health")[0] == 200
        status = json.loads(get(port, "/status")[1])
        assert status["figures"]["pending"] == 0 and status["figures"]["active_workers"] == 1
        metrics = get(port, "/metrics")[1]
        for name in ("email_ingestion_emails_processed_total", "email_ingestion_processing_latency_seconds_bucket",
                     "email_ingestion_pending_messages", "email_ingestion_consumer_lag", "email_ingestion_dlq_depth",
                     "email_ingestion_active_workers", "email_ingestion_end_to_end_latency_seconds_bucket"):
            assert name in metrics, name
        assert 'email_ingestion_emails_processed_total{group="email_processor_group",stream="email_ingestion_stream"} 5.0' \
            in metrics
    finally:
        assert stop(proc) == 0


def test_port_in_use_is_a_clear_error(producer_env):
    """A metrics port already in use makes the producer exit 1 naming PRODUCER_METRICS_PORT."""
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(producer_cmd("--once"), env={**producer_env, "PRODUCER_METRICS_PORT": str(port)},
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "PRODUCER_METRICS_PORT" in done.stderr and "Traceback" not in done.stderr
