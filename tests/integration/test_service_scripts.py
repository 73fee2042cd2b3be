"""scripts/start.sh, health_check.sh and stop.sh against real processes; systemd units verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, base_env

pytestmark = pytest.mark.slow


def free_run(count: int) -> int:
    """A base port whose next `count` ports are all free (workers use base + i)."""
    import socket
    for _ in range(50):
        base = free_port()
        try:
            socks = []
            for offset in range(1, count + 1):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports found")


def sh(script: str, env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def test_start_health_check_stop(tmp_path, mailbox, redis_server, redis_client):
    """start.sh starts everything once, health_check.sh sees it healthy, stop.sh stops it cleanly."""
    mailbox.append(sample_message(1), sample_message(2))
    producer_port, base = free_port(), free_run(2)
    env = {**os.environ, **base_env(mailbox.server.port, redis_server.url, mailbox.name),
           "PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "run"), "LOG_DIR": str(tmp_path / "logs"),
           "PRODUCER_METRICS_PORT": str(producer_port), "WORKER_BASE_PORT": str(base),
           "WORKER_BLOCK_TIMEOUT_MS": "200"}
    started = sh("start.sh", env, "--workers", "2", "--env-file", str(tmp_path / "none.env"))
    assert started.returncode == 0, started.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["producer.pid", "worker-1.pid", "worker-2.pid"]
    try:
        deadline = time.monotonic() + 30
        check = sh("health_check.sh", env)
        while check.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            check = sh("health_check.sh", env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count("/health 200 /ready 200") == 3
        again = sh("start.sh", env, "--workers", "2")
        assert "already running" in again.stdout
    finally:
        stopped = sh("stop.sh", env, "--timeout", "20")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert list((tmp_path / "run").iterdir()) == []
    assert "NOT RUNNING" in sh("health_check.sh", env).stdout
    logs = (tmp_path / "logs" / "producer.log").read_text()
    assert "producer stopped" in logs  # a clean SIGTERM exit, not a SIGKILL
    assert redis_client.xlen("email_ingestion_stream") == 2


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not available")
def test_systemd_units_verify():
    """systemd-analyze verify reports no problems in the units beyond missing executables."""
    units = sorted(str(p) for p in (ROOT / "deploy" / "systemd").glob("*.service"))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line
                and "Failed to prepare filename" not in line]
    assert problems == []


def test_units_refuse_to_restart_on_bad_settings_or_credentials():
    """The producer unit never restarts on exit 2 or 3; the worker unit uses its instance as consumer."""
    producer = (ROOT / "deploy" / "systemd" / "email-producer.service").read_text()
    assert "RestartPreventExitStatus=2 3" in producer and "--consumer %i" in Path(
        ROOT / "deploy" / "systemd" / "email-worker@.service").read_text()
