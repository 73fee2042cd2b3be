"""The project builds as a wheel whose package and console scripts work outside the checkout."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from email_ingestion import __version__

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"email-producer", "email-worker", "email-dlq", "email-ingest"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = out.glob("email_ingestion-*.whl")
    return built


def test_wheel_holds_one_top_level_package_and_the_console_scripts(wheel: Path):
    """Only email_ingestion/ is installed (no top-level common/, worker/, src/), with four entry points."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry).decode())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"email_ingestion"}
    assert set(parser["console_scripts"]) == SCRIPTS
    assert "email_ingestion/sandbox/dovecot.py" in names and "email_ingestion/mail/parse.py" in names


@pytest.mark.parametrize("module", ["email_ingestion", "email_ingestion.producer.cli", "email_ingestion.worker.cli",
                                    "email_ingestion.worker.dlq_admin", "email_ingestion.auth.oauth2_gmail"])
def test_every_command_in_the_wheel_answers_version(wheel: Path, tmp_path: Path, module: str):
    """Each command runs from the wheel alone (zip import, away from the checkout) and reports the version."""
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    code = f"import sys, {module} as m; sys.exit(m.main(['--version']))"
    if module == "email_ingestion":
        code = "import sys; from email_ingestion.admin.cli import main; sys.exit(main(['--version']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(__version__)
    assert str(ROOT) not in done.stderr


@pytest.mark.parametrize("wrapper", ["producer.py", "worker.py"])
def test_checkout_wrappers_run_without_the_installed_package(wrapper: str, tmp_path: Path):
    """`python producer.py`/`worker.py` find the package in the checkout, not through an install."""
    # -S skips site's .pth processing, so the editable install is invisible; PYTHONPATH still
    # offers the third-party dependencies.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    done = subprocess.run([sys.executable, "-S", str(ROOT / wrapper), "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{wrapper} {__version__}"


def test_the_wheel_carries_the_operator_kit(wheel: Path):
    """Config templates, alerts, dashboard, units, runbooks, service scripts and .env.example ship as package data."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in ("config/alerts.yml", "config/grafana_dashboard.json", "config/prometheus.yml", "config/redis.conf",
                 "systemd/email-producer.service", "systemd/email-worker@.service", "runbooks/incident-response.md",
                 "scripts/health_check.sh", "env.example"):
        assert f"email_ingestion/kit/{name}" in names, name


def test_kit_and_units_from_an_installed_wheel(wheel: Path, tmp_path: Path):
    """In a venv holding only the wheel (no checkout), `email-ingest kit copy` hands out the kit and
    `email-ingest units` writes units whose ExecStart runs that venv's commands."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ingest = str(venv / "bin" / "email-ingest")
    # The dependencies from this environment; the package itself only from the wheel (.pth
    # files, hence the editable install, are not read from PYTHONPATH).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    copied = subprocess.run([ingest, "kit", "copy", str(tmp_path / "kit")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=env)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "kit" / "config" / "alerts.yml").is_file() and (tmp_path / "kit" / "env.example").is_file()
    probe = "import email_ingestion.admin.kit as k; print(k.source('config'))"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # package data, not the checkout
    again = subprocess.run([ingest, "kit", "copy", str(tmp_path / "kit")], capture_output=True, text=True, timeout=60,
                           env=env)
    assert again.returncode == 1 and "not overwritten" in again.stderr
    units = subprocess.run([ingest, "units", str(tmp_path / "units")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env=env)
    assert units.returncode == 0, units.stderr
    producer = (tmp_path / "units" / "email-producer.service").read_text()
    assert f"ExecStart={venv}/bin/email-producer" in producer and "/opt/email-ingestion" not in producer


def units_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "email_ingestion", "units", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_for_a_venv_path_with_spaces_and_percent_pass_systemd_verify(tmp_path: Path):
    """`email-ingest units --venv "/x/my venv%1"`: systemd-analyze verify accepts every unit
    (ExecStart quoted, % doubled) and finds the venv's commands; a relative --env-dir and a
    path with a quote (which systemd refuses) are refused with one line."""
    venv, env_dir, units = tmp_path / "my venv%1", tmp_path / "etc dir", tmp_path / "units"
    (venv / "bin").mkdir(parents=True)
    env_dir.mkdir()
    (env_dir / "env").write_text("")
    for name in ("email-producer", "email-worker", "email-ingest"):
        (venv / "bin" / name).write_text("#!/bin/sh\n")
        (venv / "bin" / name).chmod(0o755)
    assert units_cmd(str(units), "--venv", str(venv), "--env-dir", str(env_dir)).returncode == 0
    for template, instance in (("email-worker@", "w1"), ("email-producer@", "sales")):
        shutil.copy(units / f"{template}.service", units / f"{template}{instance}.service")
    for unit in ("email-producer.service", "email-exporter.service", "email-worker@w1.service"):
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / unit)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "email" not in done.stderr, done.stderr
    refused = units_cmd(str(tmp_path / "u2"), "--env-dir", "relative/dir")
    assert refused.returncode == 1 and "absolute" in refused.stderr
    quoted = units_cmd(str(tmp_path / "u3"), "--venv", str(tmp_path / 'my "venv'))
    assert quoted.returncode == 1 and "systemd refuses" in quoted.stderr and not (tmp_path / "u3").exists()


def test_kit_copy_into_a_directory_holding_one_kit_file_copies_nothing(tmp_path: Path):
    """`kit copy DIR` where DIR already has one of the kit's files: exit 1 and nothing else
    written (no half-copied kit)."""
    (tmp_path / "kit" / "systemd").mkdir(parents=True)
    (tmp_path / "kit" / "systemd" / "email-worker@.service").write_text("mine\n")
    done = subprocess.run([sys.executable, "-m", "email_ingestion", "kit", "copy", str(tmp_path / "kit")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nothing copied" in done.stderr
    assert [p.name for p in (tmp_path / "kit").rglob("*") if p.is_file()] == ["email-worker@.service"]
