"""The console runs from an installed wheel: templates and static files are package data."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.console.conftest import ADMIN, ADMIN_PW, write_users

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_console_serves_pages_from_an_installed_wheel(tmp_path, redis_server):
    """`pip install` of the wheel (away from the checkout) gives a console whose login page and
    stylesheet load: the templates and static files travel in the package."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheel_dir.glob("email_ingestion-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    users = write_users(tmp_path / "users.json", **{ADMIN: ("admin", ADMIN_PW)})
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(target), "REDIS_URL": redis_server.url,
           "CONSOLE_USERS_FILE": str(users), "CONSOLE_PORT": "0"}
    # -I would drop PYTHONPATH; -s keeps user site-packages out. The venv's own site-packages
    # supply Flask and waitress, the target directory the package: not the checkout's src/.
    proc = subprocess.Popen([sys.executable, "-s", "-m", "email_ingestion", "console", "--env-file", os.devnull],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split("listening on ", 1)[1].strip()
        with urllib.request.urlopen(f"{url}login", timeout=30) as page:
            assert b'name="login_token"' in page.read()
        with urllib.request.urlopen(f"{url}static/console.css", timeout=30) as css:
            assert b".chart-line" in css.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert str(target) in subprocess.run([sys.executable, "-s", "-c", "import email_ingestion.console as c; print(c.__file__)"],
                                         env=env, capture_output=True, text=True, timeout=60).stdout
