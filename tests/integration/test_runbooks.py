"""Every command in the runbooks' bash blocks runs, in order, in a scratch installation.

Each runbook page is one bash session (so `cd` and `export` carry over, as for a person
following it) against a real Redis, a real Dovecot mailbox, a real producer and a real
worker. What cannot run here is replaced, and only that: systemctl, journalctl and useradd
are stand-ins that succeed; /etc, /opt, /var paths and the owner names are mapped into the
scratch root; the venv and `pip install` link this checkout's venv (a fresh one takes minutes). A command
must exit 0, or 0/1 when its own comment says it exits 1; no command may be missing, refuse
its arguments, print a traceback or miss a file.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, base_env, producer_cmd
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow
RUNBOOKS = sorted((ROOT / "docs" / "runbooks").glob("*.md"))
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
DOC_DLQ_ID = "1795376998576-0"  # the id dlq-management.md shows
STUBS = {
    # `stop|start email-producer` stop and start the test's producer for real
    # (producer_service): `mailbox reset` refuses while a producer runs.
    "systemctl": 'case "$1" in is-active) echo active ;; show|list-units) ;; '
                 'stop|start) [ "$2" = email-producer ] && [ -n "$RUNBOOK_PRODUCER_SERVICE" ] && '
                 '"$RUNBOOK_PRODUCER_SERVICE" "$1"; echo "(systemctl $*)" ;; *) echo "(systemctl $*)" ;; esac',
    "journalctl": 'echo "(journalctl $*)"',
    "useradd": 'echo "(useradd $*)"',
}
FORBIDDEN = ("Traceback", "command not found", "No such file or directory", "usage:", "unrecognized arguments")


def commands(page: str) -> list[tuple[str, str]]:
    """(command, its comment) for every command in the page's bash blocks, continuations joined."""
    found = []
    for block in BLOCK.findall(page):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = re.split(r"\s+#\s", line, maxsplit=1)
            command, comment = parts[0], parts[1] if len(parts) > 1 else ""
            found.append((command.strip(), comment))
    return found


def rewrite(command: str, scratch: Path, mapping: dict[str, str]) -> str:
    for before, after in mapping.items():
        command = command.replace(before, after)
    for path in ("/etc/email-ingestion", "/etc/systemd/system", "/opt/email-ingestion", "/var/lib/email-ingestion",
                 "/var/backups/email-ingestion", "/var/lib/redis", "/var/tmp"):
        command = command.replace(path, f"{scratch}{path}")
    return command


def session_script(page: str, scratch: Path, mapping: dict[str, str]) -> tuple[str, list[tuple[str, set[int]]]]:
    lines, expected = [], []
    for index, (command, comment) in enumerate(commands(page)):
        allowed = {0, 1} if re.search(r"\bexits? 1\b", comment) else {0}
        expected.append((command, allowed))
        lines += [rewrite(command, scratch, mapping), f'echo "__RC__ {index} $?" >>"$RUNBOOK_RC_FILE"']
    return "\n".join(lines) + "\n", expected


@pytest.fixture
def installation(tmp_path, mailbox, redis_server, redis_client) -> Any:
    """A host as the install section leaves it: settings in etc/, a synced mailbox, a live worker."""
    scratch = tmp_path / "root"
    for directory in ("etc/systemd/system", "opt", "var/lib/redis", "var/tmp", "bin"):
        (scratch / directory).mkdir(parents=True)
    for name, body in STUBS.items():
        (scratch / "bin" / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (scratch / "bin" / name).chmod(0o755)
    mailbox.append(*(sample_message(i) for i in range(1, 26)))
    port = free_port()
    settings = {**base_env(mailbox.server.port, redis_server.url, mailbox.name), "PRODUCER_METRICS_PORT": str(port),
                "WORKER_BLOCK_TIMEOUT_MS": "300"}
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    venv = Path(sys.executable).parent.parent
    (scratch / "opt" / "email-ingestion").mkdir(parents=True)
    (scratch / "opt" / "email-ingestion" / "venv").symlink_to(venv)
    mapping = {"python3 -m venv /opt/email-ingestion/venv && /opt/email-ingestion/venv/bin/pip install email_ingestion-*.whl":
               f"ln -sfn {venv} /opt/email-ingestion/venv", "-o email-ingestion": f"-o {user}",
               "-g email-ingestion": f"-g {group}", "-o root": f"-o {user}", "-g root": f"-g {group}",
               "--mailbox INBOX": f"--mailbox {mailbox.name}", "-p 6379": f"-p {redis_server.port}",
               DOC_DLQ_ID: DOC_DLQ_ID,
               "<backup-file>": '$(cd "$RUNBOOK_BACKUPS" && ls -t redis-backup-*.rdb* | grep -v sha256 | head -1)',
               "<correlation-id>": "0123456789abcdef"}
    env = {"PATH": f"{scratch / 'bin'}:{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(tmp_path), "LANG": "C.UTF-8", "RUNBOOK_BACKUPS": f"{scratch}/var/backups/email-ingestion"}
    return {"scratch": scratch, "settings": settings, "mapping": mapping, "env": env, "port": port,
            "redis": redis_client, "producer_env": {**env, **settings}}


def write_settings(scratch: Path, settings: dict[str, str]) -> None:
    """What a person does after `install ... .env.example ...env`: fill it in (the kit is
    where the install section copied it)."""
    from email_ingestion.admin.kit import copy_kit
    etc = scratch / "etc" / "email-ingestion"
    etc.mkdir(parents=True, exist_ok=True)
    copy_kit(etc / "kit")
    for name in ("env", "admin.env"):
        (etc / name).write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (etc / name).chmod(0o600)


def start_services(inst: dict[str, Any]) -> list[subprocess.Popen[bytes]]:
    env = inst["producer_env"]
    assert subprocess.run(producer_cmd("--once"), env={**env, "PRODUCER_METRICS_PORT": "0"}, capture_output=True,
                          timeout=60).returncode == 0
    procs = [subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "w1", "--handler", "noop"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    healthy = [sys.executable, "-m", "email_ingestion", "status"]
    assert wait_until(lambda: subprocess.run(healthy, env=env, capture_output=True).returncode == 0, timeout_s=60)
    return procs


def producer_service(inst: dict[str, Any], first: subprocess.Popen[bytes], pid_file: Path) -> Path:
    """A script doing `systemctl stop|start email-producer` to the test's producer: stop waits
    (up to 30 s) for it to exit, start waits (up to 60 s) until `status` is healthy again."""
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in inst["producer_env"].items())
    producer, status = shlex.join(producer_cmd()), shlex.join([sys.executable, "-m", "email_ingestion", "status"])
    script = pid_file.with_suffix(".sh")
    script.write_text(f"""#!/bin/bash
pid=$(cat {pid_file} 2>/dev/null || echo {first.pid})
case "$1" in
stop) kill "$pid" 2>/dev/null
      for _ in $(seq 300); do {{ [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat; }} || break; sleep 0.1; done ;;
start) env -i {env} {producer} >/dev/null 2>&1 &
       echo $! > {pid_file}
       for _ in $(seq 600); do env -i {env} {status} >/dev/null 2>&1 && break; sleep 0.1; done ;;
esac
""")
    script.chmod(0o755)
    return script


def stop_restarted(pid_file: Path) -> None:
    """The producer a page's `systemctl start` started, if any: SIGTERM, then wait for it."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout_s=30)


def run_page(page: str, inst: dict[str, Any], log: Path) -> list[tuple[str, set[int], int | None]]:
    script, expected = session_script(page, inst["scratch"], inst["mapping"])
    rc_file = log.with_suffix(".rc")
    rc_file.write_text("")
    with open(log, "w") as out:
        subprocess.run(["bash", "-c", script], env={**inst["env"], "RUNBOOK_RC_FILE": str(rc_file)},
                       cwd=inst["scratch"], stdout=out, stderr=subprocess.STDOUT, timeout=300)
    codes = dict(line.split()[1:] for line in rc_file.read_text().splitlines())
    return [(command, allowed, int(codes[str(i)]) if str(i) in codes else None)
            for i, (command, allowed) in enumerate(expected)]


def check(results: list[tuple[str, set[int], int | None]], log: Path) -> None:
    output = log.read_text()
    failed = [f"{code}: {command}" for command, allowed, code in results if code not in allowed]
    assert not failed, "\n".join(failed) + "\n--- session output ---\n" + output[-4000:]
    for marker in FORBIDDEN:
        assert marker not in output, f"{marker!r} in the session:\n{output[-4000:]}"


def test_runbooks_have_commands():
    """The extraction finds the pages' commands (else the test below would prove nothing)."""
    assert sum(len(commands(p.read_text())) for p in RUNBOOKS) > 40
    assert any(p.name == "reingest-backfill.md" for p in RUNBOOKS)


def test_install_section_runs_in_a_scratch_root(installation, tmp_path):
    """The incident-response install block, on a host with nothing installed yet."""
    page = (ROOT / "docs" / "runbooks" / "incident-response.md").read_text()
    install = page[page.index("## Install"):]
    results = run_page(install, installation, tmp_path / "install.log")
    check(results, tmp_path / "install.log")
    etc = installation["scratch"] / "etc" / "email-ingestion"
    assert (etc / "env").stat().st_mode & 0o777 == 0o600 and (etc / "env").read_text().startswith("#")
    units = list((installation["scratch"] / "etc" / "systemd" / "system").glob("*.service"))
    assert len(units) >= 3
    # The units run the installed commands of the venv they were written for, never a checkout.
    for unit in units:
        exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
        program = exec_start.split("=", 1)[1].split()[0]
        assert "/bin/email-" in program and Path(program).exists() and ".py" not in exec_start, exec_start
    assert (installation["scratch"] / "etc" / "email-ingestion" / "kit" / "config" / "alerts.yml").is_file()


@pytest.mark.parametrize("runbook", [p.name for p in RUNBOOKS])
def test_every_runbook_command_runs(installation, tmp_path, runbook):
    """Each page, top to bottom, on an installed and running system."""
    inst = installation
    write_settings(inst["scratch"], inst["settings"])
    page = (ROOT / "docs" / "runbooks" / runbook).read_text()
    if "## Install" in page:
        page = page[:page.index("## Install")]  # run by the test above, on an empty host
    procs = start_services(inst) if commands(page) else []
    pid_file = tmp_path / "producer.pid"
    if procs:
        inst["env"]["RUNBOOK_PRODUCER_SERVICE"] = str(producer_service(inst, procs[0], pid_file))
    if runbook == "dlq-management.md":
        inst["redis"].xadd(DLQ, {"payload": "{}", "reason": "permanent", "error_type": "PermanentError"}, id=DOC_DLQ_ID)
    try:
        log = tmp_path / f"{runbook}.log"
        check(run_page(page, inst, log), log)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        stop_restarted(pid_file)
    if runbook == "reingest-backfill.md":  # the reset took: the next pass emits all 25 again
        assert subprocess.run(producer_cmd("--once"), env={**inst["producer_env"], "PRODUCER_METRICS_PORT": "0"},
                              capture_output=True, timeout=60).returncode == 0
        assert inst["redis"].xlen("email_ingestion_stream") >= 50
