"""Console fixtures: a users file (an admin and a viewer), the app over the session's real
redis-server, and logged-in test clients."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from email_ingestion.admin.common import target
from email_ingestion.common.settings import Settings, load_settings
from email_ingestion.console.app import create_app
from email_ingestion.console.guard import Console
from email_ingestion.console.login_limit import LoginLimit
from email_ingestion.console.sessions import SessionStore
from email_ingestion.console.users import User, UserDirectory, hash_password, save_users

ADMIN, ADMIN_PW = "ada", "ada-correct-horse-1"
VIEWER, VIEWER_PW = "vic", "vic-battery-staple-2"
STREAM = "email_ingestion_stream"
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
# Cheaper scrypt than production (2**15) so logins in tests cost little CPU; the stored
# parameters are honoured, so this exercises the same code.
TEST_N = 2**12


def write_users(path: Path, **roles: tuple[str, str]) -> Path:
    save_users(path, {name: User(name, role, hash_password(pw, n=TEST_N))  # type: ignore[arg-type]
                      for name, (role, pw) in roles.items()})
    return path


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_users(tmp_path / "users.json", **{ADMIN: ("admin", ADMIN_PW), VIEWER: ("viewer", VIEWER_PW)})


@pytest.fixture
def console_settings(redis_server: Any, redis_client: Any, users_file: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("CONSOLE_USERS_FILE", str(users_file))
    return load_settings(env_file=None)


def build_console(settings: Settings) -> Console:
    c = settings.console
    where = target(settings)
    return Console(target=where, settings=c, max_unacked=settings.redis.max_stream_length, users=UserDirectory(c.users_file),
                   sessions=SessionStore(where.client, idle_s=c.session_idle_seconds, max_s=c.session_max_seconds),
                   login_limit=LoginLimit(where.client, max_failures=c.login_max_failures, window_s=c.login_window_seconds))


@pytest.fixture
def console(console_settings: Settings) -> Console:
    return build_console(console_settings)


@pytest.fixture
def app(console: Console) -> Flask:
    return create_app(console)


def login(client: FlaskClient, name: str, password: str) -> Any:
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token, page.get_data(as_text=True)
    return client.post("/login", data={"login_token": token.group(1), "username": name, "password": password})


def csrf_token(client: FlaskClient) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/audit").get_data(as_text=True))
    assert found
    return found.group(1)


@pytest.fixture
def as_user(app: Flask) -> Callable[[str], FlaskClient]:
    def make(name: str) -> FlaskClient:
        client = app.test_client()
        password = {ADMIN: ADMIN_PW, VIEWER: VIEWER_PW}[name]
        assert login(client, name, password).status_code == 302
        return client
    return make
