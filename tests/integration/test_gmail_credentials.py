"""Credentials of a Google OAuth app (issue 20): the token's age, and invalid_grant as its own state."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from email_ingestion.sandbox.dovecot import free_port
from tests.conftest import ROOT, USER, producer_cmd
from tests.integration.test_auth_transport import CLIENT_SECRET, REFRESH_TOKEN, oauth_env, write_token_file
from tests.support.token_server import TokenServer
from tests.support.waits import wait_until


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    server = TokenServer(USER, REFRESH_TOKEN).start()
    yield server
    server.stop()


def test_token_command_shows_the_refresh_tokens_age_and_warns_near_7_days(tmp_path, token_server):
    """--info shows refresh_token_age_days and warns of the 7-day expiry of apps in Testing; a refresh keeps the age."""
    token_file = tmp_path / "token.json"
    write_token_file(token_file, "old-access", dt.datetime(2020, 1, 1), token_server.url)
    data = json.loads(token_file.read_text())
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(days=6, hours=12)
    token_file.write_text(json.dumps({**data, "refresh_token_issued_at": issued.isoformat()}))
    env = {"PATH": "/usr/bin:/bin", "GOOGLE_TOKEN_URI": token_server.url, "GOOGLE_CLIENT_ID": "client-id.apps.example",
           "GOOGLE_CLIENT_SECRET": CLIENT_SECRET}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_ingestion.auth.oauth2_gmail", *args, "--token-file",
                               str(token_file)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    info = cli("--info")
    assert info.returncode == 0, info.stderr
    assert 6.4 < json.loads(info.stdout)["refresh_token_age_days"] < 6.6
    assert "7 days" in info.stderr and "Testing" in info.stderr
    assert cli("--refresh").returncode == 0
    assert 6.4 < json.loads(cli("--info").stdout)["refresh_token_age_days"] < 6.6


def status_of(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def metrics_of(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


def test_invalid_grant_puts_the_mailbox_in_the_credentials_state(tmp_path, mailbox, producer_env, token_server,
                                                                 redis_client):
    """invalid_grant: the mailbox shows state `credentials` in /status and the credentials metric is 1."""
    token_server.fail_with = "invalid_grant"
    token_file = tmp_path / "token.json"
    write_token_file(token_file, "expired", dt.datetime(2020, 1, 1), token_server.url)
    mailboxes = tmp_path / "mailboxes.toml"
    mailboxes.write_text(f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{mailbox.name}"\n')
    port = free_port()
    env = {**oauth_env(producer_env, token_file, token_server.url), "MAILBOXES_FILE": str(mailboxes),
           "PRODUCER_METRICS_PORT": str(port), "LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def state() -> str | None:
            body = status_of(port)
            found = [m for m in (body or {}).get("mailboxes", []) if m.get("mailbox") == mailbox.name]
            return found[0]["state"] if found else None

        assert wait_until(lambda: state() == "credentials", timeout_s=60)
        assert 'email_ingestion_producer_mailbox_credentials{account="alice@example.com"' in metrics_of(port)
        assert any(line.startswith("email_ingestion_producer_mailbox_credentials{") and line.endswith(" 1.0")
                   for line in metrics_of(port).splitlines())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
