"""Fixtures: a real redis-server and a real Dovecot on loopback, shared per session; each
test gets an empty Redis database and a mailbox of its own."""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from imapclient import IMAPClient

from email_ingestion.common.logging import Redactor
from email_ingestion.common.settings import Settings, load_settings
from email_ingestion.sandbox.dovecot import DovecotServer
from email_ingestion.sandbox.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run (a seed derived from each test), so a
# run cannot fail by luck; a counterexample found while developing is pinned with @example.
# HYPOTHESIS_PROFILE=explore searches afresh each time (for hunting, not for CI).
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
USER, PASSWORD = "alice@example.com", "alice-pw"
# A user whose password LOGIN cannot carry (issue 9 §8): needs AUTHENTICATE PLAIN, UTF-8.
UTF8_USER, UTF8_PASSWORD = "bob@example.com", "pässwört-ünïcødé-密码"
CORPUS = ROOT.parent / "shared" / "corpus" / "public"


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    server = DovecotServer(tmp_path_factory.mktemp("dovecot"), users={USER: PASSWORD, UTF8_USER: UTF8_PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Any:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


def imap_admin(server: DovecotServer) -> IMAPClient:
    client = IMAPClient("127.0.0.1", server.port, ssl=False)
    client.login(USER, PASSWORD)
    return client


@dataclass
class Mailbox:
    server: DovecotServer
    name: str

    def append(self, *messages: bytes, msg_time: Any = None) -> None:
        client = imap_admin(self.server)
        try:
            if len(messages) > 1 and msg_time is None:
                client.multiappend(self.name, list(messages))
            else:
                for raw in messages:
                    client.append(self.name, raw, msg_time=msg_time)
        finally:
            client.logout()

    def recreate(self) -> None:
        client = imap_admin(self.server)
        try:
            client.delete_folder(self.name)
            client.create_folder(self.name)
        finally:
            client.logout()

    def uidvalidity(self) -> int:
        client = imap_admin(self.server)
        try:
            return int(client.folder_status(self.name, ["UIDVALIDITY"])[b"UIDVALIDITY"])
        finally:
            client.logout()


@pytest.fixture
def mailbox(dovecot: DovecotServer) -> Mailbox:
    name = f"t-{uuid.uuid4().hex[:10]}"
    client = imap_admin(dovecot)
    client.create_folder(name)
    client.logout()
    return Mailbox(dovecot, name)


def base_env(imap_port: int, redis_url: str, mailbox: str) -> dict[str, str]:
    return {
        "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(imap_port), "IMAP_SSL": "false",
        "IMAP_USER": USER, "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD,
        "IMAP_MAILBOX": mailbox, "REDIS_URL": redis_url, "PRODUCER_METRICS_PORT": "0",
        "LOG_FORMAT": "json", "POLL_INTERVAL_SECONDS": "30",
    }


@pytest.fixture
def producer_env(dovecot: DovecotServer, redis_server: RedisServer, mailbox: Mailbox) -> dict[str, str]:
    """Environment for a producer subprocess on this test's mailbox."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAP_", "REDIS_", "GOOGLE_"))}
    env.update(base_env(dovecot.port, redis_server.url, mailbox.name))
    return env


@pytest.fixture
def make_settings(producer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(**env: Any) -> Settings:
        for key, value in {**producer_env, **{k: str(v) for k, v in env.items()}}.items():
            monkeypatch.setenv(key, value)
        return load_settings(env_file=None)
    return make


def run_once(settings: Settings) -> int:
    from email_ingestion.producer.cli import run
    return run(settings, threading.Event(), Redactor(settings.secrets()), once=True, dry_run=False)


def stream_payloads(client: Any, stream: str = "email_ingestion_stream") -> list[dict[str, Any]]:
    return [json.loads(fields[b"payload"]) for _, fields in client.xrange(stream)]


def written_keys(client: Any) -> list[bytes]:
    """Every key but the mailbox ownership's counter (producer/ownership.py), which a producer
    bumps before it connects anywhere and which must outlive it."""
    return [k for k in client.keys("*") if not k.endswith(b":lease_token")]


def producer_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "producer.py"), *args]
