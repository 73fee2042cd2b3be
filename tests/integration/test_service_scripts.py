"""scripts/start.sh, health_check.sh and stop.sh against real processes; systemd units verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, base_env, producer_cmd
from tests.support.waits import wait_until

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


def clean(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(("IMAP_", "REDIS_", "GOOGLE_", "WORKER_", "PRODUCER_"))}


def env_file(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_start_health_check_stop(tmp_path, mailbox, redis_server, redis_client):
    """Settings (ports included) only in the env file: start.sh, health_check.sh and the services agree."""
    mailbox.append(sample_message(1), sample_message(2))
    producer_port, base = free_port(), free_run(2)
    settings = env_file(tmp_path / "svc.env", {**base_env(mailbox.server.port, redis_server.url, mailbox.name),
                                               "PRODUCER_METRICS_PORT": str(producer_port), "WORKER_BASE_PORT": str(base),
                                               "WORKER_BLOCK_TIMEOUT_MS": "200"})
    env = {**clean(dict(os.environ)), "PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "run"),
           "LOG_DIR": str(tmp_path / "logs"), "START_GRACE_SECONDS": "1"}
    started = sh("start.sh", env, "--workers", "2", "--env-file", str(settings))
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.count("started ") == 3
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["producer.pid", "worker-1.pid", "worker-2.pid"]
    try:
        assert wait_until(lambda: sh("health_check.sh", env, "--env-file", str(settings)).returncode == 0, 30)
        check = sh("health_check.sh", env, "--env-file", str(settings))
        assert check.stdout.count("/health 200 /ready 200") == 3, check.stdout
        again = sh("start.sh", env, "--workers", "2", "--env-file", str(settings))
        assert "already running" in again.stdout
    finally:
        stopped = sh("stop.sh", env, "--timeout", "20")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert list((tmp_path / "run").iterdir()) == []
    assert "NOT RUNNING" in sh("health_check.sh", env, "--env-file", str(settings)).stdout
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


def test_start_reports_a_process_that_dies_during_start_up(tmp_path, redis_server):
    """A producer that exits 2 at once (no IMAP_USER) is reported FAILED with its status; exit 1."""
    settings = env_file(tmp_path / "svc.env", {"REDIS_URL": redis_server.url, "PRODUCER_METRICS_PORT": "0",
                                               "WORKER_BASE_PORT": "0"})
    env = {**clean(dict(os.environ)), "PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "run"),
           "LOG_DIR": str(tmp_path / "logs"), "START_GRACE_SECONDS": "10"}  # a loaded 2-core CI host
    try:
        started = sh("start.sh", env, "--workers", "1", "--env-file", str(settings))
    finally:
        sh("stop.sh", env, "--timeout", "20")
    assert started.returncode == 1
    assert "FAILED: producer exited with status 2 during start-up" in started.stderr
    assert "IMAP_USER" in started.stderr and "started worker-1" in started.stdout
    assert "started producer" not in started.stdout


FAKE_SYSTEMCTL = """#!/usr/bin/env bash
# A stand-in for systemctl with two units: the producer active on PORT, a worker failed.
case "$1" in
  list-units) echo "email-producer.service loaded active running x"; echo "email-worker@w1.service loaded failed failed x" ;;
  is-active) [ "$2" = email-producer.service ] && echo active || { echo failed; exit 3; } ;;
  show) [ "${@: -1}" = email-producer.service ] && echo "LOG_FORMAT=json PRODUCER_METRICS_PORT=__PORT__" ;;
esac
"""


def test_health_check_asks_systemd_when_units_exist(tmp_path, mailbox, producer_env):
    """On a systemd install (no PID files) each unit's state comes from systemctl and its port
    from the unit's Environment=; a failed unit is NOT RUNNING and the check exits 1."""
    port = free_port()
    fake = tmp_path / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.replace("__PORT__", str(port)))
    fake.chmod(0o755)
    proc = subprocess.Popen(producer_cmd(), env={**producer_env, "PRODUCER_METRICS_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**clean(dict(os.environ)), "PYTHON": sys.executable, "SYSTEMCTL": str(fake), "RUN_DIR": str(tmp_path / "none")}
    try:
        assert wait_until(lambda: "/ready 200" in sh("health_check.sh", env, "--env-file", os.devnull).stdout, 30)
        check = sh("health_check.sh", env, "--env-file", os.devnull)
    finally:
        proc.terminate()
        proc.wait(20)
    assert "email-producer.service: active, /health 200 /ready 200" in check.stdout
    assert "email-worker@w1.service: NOT RUNNING (systemd: failed)" in check.stdout and check.returncode == 1


def test_health_check_without_pid_files_or_units_probes_the_configured_port(tmp_path, mailbox, producer_env):
    """Neither systemd units nor PID files: /health and /ready on the port from the env file."""
    port = free_port()
    settings = env_file(tmp_path / "svc.env", {"PRODUCER_METRICS_PORT": str(port)})
    proc = subprocess.Popen(producer_cmd(), env={**producer_env, "PRODUCER_METRICS_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**clean(dict(os.environ)), "PYTHON": sys.executable, "SYSTEMCTL": "/nonexistent",
           "RUN_DIR": str(tmp_path / "none")}
    try:
        assert wait_until(lambda: sh("health_check.sh", env, "--env-file", str(settings)).returncode == 0, 30)
    finally:
        proc.terminate()
        proc.wait(20)
    assert sh("health_check.sh", env, "--env-file", str(settings)).returncode == 1


def test_two_templated_producers_on_one_host_do_not_collide(tmp_path, mailbox, redis_server, redis_client):
    """email-producer@.service: each instance reads the shared file then its own, so two
    mailboxes run side by side on their own metrics ports."""
    from tests.support.units import command, environment
    etc = tmp_path / "etc"
    etc.mkdir()
    shared = base_env(mailbox.server.port, redis_server.url, mailbox.name)
    env_file(etc / "env", {**shared, "PRODUCER_METRICS_PORT": "9090"})
    ports = {"a": free_port(), "b": free_port()}
    for name, port in ports.items():
        env_file(etc / f"producer-{name}.env", {"PRODUCER_METRICS_PORT": str(port)})
    procs = [subprocess.Popen(command("email-producer@.service", name),
                              env={**clean(dict(os.environ)), **environment("email-producer@.service", name, etc)},
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in ports]
    env = {**clean(dict(os.environ)), "PYTHON": sys.executable, "SYSTEMCTL": "/nonexistent", "RUN_DIR": "/nonexistent"}
    try:
        for port in ports.values():
            settings = env_file(tmp_path / f"probe-{port}.env", {"PRODUCER_METRICS_PORT": str(port)})
            assert wait_until(lambda s=settings: sh("health_check.sh", env, "--env-file", str(s)).returncode == 0, 30)
        assert all(proc.poll() is None for proc in procs)
    finally:
        for proc in procs:
            proc.terminate()
            assert proc.wait(20) == 0
