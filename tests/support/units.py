"""Run a systemd unit's ExecStart the way systemd would, without systemd: its environment
files read in order (later wins, a leading '-' means optional), %i substituted, and the
installation paths (/opt/email-ingestion, /etc/email-ingestion) mapped into a scratch root."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from dotenv import dotenv_values

from tests.conftest import ROOT

UNITS = ROOT / "deploy" / "systemd"


def service_lines(unit: str, key: str) -> list[str]:
    lines = (UNITS / unit).read_text().splitlines()
    return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]


def environment(unit: str, instance: str, etc: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for spec in service_lines(unit, "EnvironmentFile"):
        optional = spec.startswith("-")
        path = Path(spec.lstrip("-").replace("%i", instance).replace("/etc/email-ingestion", str(etc)))
        if not path.exists():
            if optional:
                continue
            raise FileNotFoundError(f"{unit}: EnvironmentFile {path} missing (systemd would refuse to start)")
        env.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    return env


# The installed commands a unit runs, as this checkout runs them.
_COMMANDS = {"email-producer": [str(ROOT / "producer.py")], "email-worker": [str(ROOT / "worker.py")],
             "email-ingest": ["-m", "email_ingestion"]}


def command(unit: str, instance: str) -> list[str]:
    [exec_start] = service_lines(unit, "ExecStart")
    program, *args = shlex.split(exec_start.replace("%i", instance))
    return [sys.executable, *_COMMANDS[Path(program).name], *args]
