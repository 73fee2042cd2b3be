"""`email-ingest console` and `email-ingest console users ...` as an operator runs them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from email_ingestion.console.sessions import SessionStore
from email_ingestion.console.users import load_users, verify_password
from tests.conftest import ROOT


def ingest(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "email_ingestion", *args, "--env-file", os.devnull], input=stdin,
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60, cwd=ROOT)


def users(path: Path, redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"CONSOLE_USERS_FILE": str(path), "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "email_ingestion", "console", "users", "--env-file", os.devnull, *args],
                          input=stdin, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_users_file_is_written_with_salted_hashes_for_its_owner_only(tmp_path, redis_server):
    """`users add` writes a 0600 file with a salted scrypt hash (never the password); two users
    with one password get different hashes; `list` shows names and roles."""
    path = tmp_path / "users.json"
    for name, role in (("ada", "admin"), ("vic", "viewer")):
        done = users(path, redis_server.url, "add", name, "--role", role, "--password-stdin", stdin="same-password-123\n")
        assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "same-password-123" not in text
    found = load_users(path)
    assert found["ada"].role == "admin" and found["vic"].role == "viewer"
    assert found["ada"].password_hash.startswith("scrypt$") and found["ada"].password_hash != found["vic"].password_hash
    assert verify_password("same-password-123", found["ada"].password_hash)
    assert users(path, redis_server.url, "list").stdout.split() == ["ada", "admin", "vic", "viewer"]


def test_bad_requests_exit_2_and_leave_the_file(tmp_path, redis_server):
    """A short password, a duplicate name, a hostile name, an unknown user: exit 2, one line, file unchanged."""
    path = tmp_path / "users.json"
    done = users(path, redis_server.url, "add", "ada", "--role", "admin", "--password-stdin", stdin="long-enough-pw-1\n")
    assert done.returncode == 0
    before = path.read_bytes()
    for args, stdin in [(("add", "bob", "--role", "admin", "--password-stdin"), "short\n"),
                        (("add", "ada", "--role", "viewer", "--password-stdin"), "long-enough-pw-2\n"),
                        (("add", "a:b\nc", "--role", "viewer", "--password-stdin"), "long-enough-pw-2\n"),
                        (("remove", "nobody"), "")]:
        done = users(path, redis_server.url, *args, stdin=stdin)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
    assert path.read_bytes() == before


def test_changing_or_removing_a_user_ends_their_sessions(tmp_path, redis_server, redis_client):
    """`users set --role` and `users remove` delete that user's sessions from Redis at once, and only theirs."""
    path = tmp_path / "users.json"
    for name in ("ada", "eve"):
        users(path, redis_server.url, "add", name, "--role", "admin", "--password-stdin", stdin="long-enough-pw-1\n")
    store = SessionStore(redis_client, idle_s=600, max_s=3600)
    _, ada = store.create("ada", "admin", 0)
    _, eve = store.create("eve", "admin", 0)
    done = users(path, redis_server.url, "set", "ada", "--role", "viewer")
    assert done.returncode == 0 and "ended 1 session" in done.stdout, done.stderr
    assert not redis_client.exists(f"email_ingestion:console:session:{ada.token_digest}")
    assert redis_client.exists(f"email_ingestion:console:session:{eve.token_digest}")
    assert users(path, redis_server.url, "remove", "eve").returncode == 0
    assert not redis_client.exists(f"email_ingestion:console:session:{eve.token_digest}")
    assert set(load_users(path)) == {"ada"} and load_users(path)["ada"].role == "viewer"


def test_no_users_file_no_console(tmp_path, redis_server):
    """There is no default password: without a users file (or with an empty one) the console does not start."""
    env = {"REDIS_URL": redis_server.url, "CONSOLE_USERS_FILE": str(tmp_path / "missing.json"), "CONSOLE_PORT": "0"}
    done = ingest("console", env=env)
    assert done.returncode == 2 and "console users add" in done.stderr
    (tmp_path / "empty.json").write_text(json.dumps({"users": {}}))
    done = ingest("console", env={**env, "CONSOLE_USERS_FILE": str(tmp_path / "empty.json")})
    assert done.returncode == 2 and "holds no user" in done.stderr


def test_listens_on_loopback_by_default(tmp_path, redis_server):
    """Started without CONSOLE_HOST the console binds 127.0.0.1 and says where; /healthz answers there."""
    path = tmp_path / "users.json"
    users(path, redis_server.url, "add", "ada", "--role", "admin", "--password-stdin", stdin="long-enough-pw-1\n")
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_server.url, "CONSOLE_USERS_FILE": str(path), "CONSOLE_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "email_ingestion", "console", "--env-file", os.devnull], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("console: listening on http://127.0.0.1:"), line
        url = line.split("listening on ", 1)[1].strip()
        with urllib.request.urlopen(f"{url}healthz", timeout=30) as response:
            assert response.read() == b"ok\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_users_file_others_may_write_is_refused(tmp_path, redis_server, users_file, app):
    """A group- or world-writable users file stops the console at start (exit 2) and, changed
    while it runs, lets nobody in: anyone able to write it could make themselves admin."""
    from tests.console.conftest import ADMIN, ADMIN_PW, login
    client = app.test_client()
    assert login(client, ADMIN, ADMIN_PW).status_code == 302
    users_file.chmod(0o666)
    assert client.get("/audit").status_code == 302
    assert login(app.test_client(), ADMIN, ADMIN_PW).status_code == 401
    done = ingest("console", env={"REDIS_URL": redis_server.url, "CONSOLE_USERS_FILE": str(users_file), "CONSOLE_PORT": "0"})
    assert done.returncode == 2 and "chmod 600" in done.stderr


def test_options_are_accepted_after_the_subcommand(tmp_path, redis_server):
    """`console users add ... --env-file F --users-file U` works as well as with the options first."""
    path = tmp_path / "users.json"
    done = subprocess.run([sys.executable, "-m", "email_ingestion", "console", "users", "add", "ada", "--role", "viewer",
                           "--password-stdin", "--env-file", os.devnull, "--users-file", str(path)],
                          input="long-enough-pw-1\n", env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert load_users(path)["ada"].role == "viewer"
