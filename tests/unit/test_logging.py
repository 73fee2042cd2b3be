"""Secrets are redacted at the logging layer, whatever code path produced the line."""

from __future__ import annotations

import base64
import io
import json
import logging
from types import SimpleNamespace

import pytest

from email_ingestion.common.logging import Redactor, correlation, setup_logging


@pytest.fixture
def captured():
    stream = io.StringIO()
    redactor = Redactor(["hunter2-password"])
    setup_logging("DEBUG", "json", "test", redactor)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream, redactor
    logging.getLogger().handlers.clear()


@pytest.mark.parametrize("secret_line", [
    "LOGIN alice hunter2-password",
    "AUTHENTICATE XOAUTH2 " + base64.b64encode(b"user=a@b.c\x01auth=Bearer ya29.abc\x01\x01").decode(),
    "user=a@b.c\x01auth=Bearer ya29.a0AfH6SMBx-secret\x01\x01",
    "Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl",
    '{"refresh_token": "1//0gLongRefreshTokenValue", "client_secret": "abc123"}',
    "redis://:s3cr3t@host password=s3cr3t",
])
def test_secret_shapes_never_reach_output(captured, secret_line):
    """Passwords, XOAUTH2 strings, bearer and OAuth tokens, Redis URL passwords never reach log output."""
    stream, _ = captured
    logging.getLogger("imapclient").warning("> %s", secret_line)
    logging.getLogger("x").info("sending", extra={"detail": secret_line})
    out = stream.getvalue()
    for fragment in ("hunter2", "ya29.a", "eyJhbGciOi", "1//0gLong", "abc123", "s3cr3t", "dXNlcj0"):
        assert fragment not in out


def test_secrets_added_later_are_redacted(captured):
    """A secret registered after logging was set up is redacted from later lines."""
    stream, redactor = captured
    redactor.add_secret("fresh-access-token-value")
    logging.getLogger("x").error("failed with fresh-access-token-value")
    assert "fresh-access-token-value" not in stream.getvalue()


def test_exceptions_are_redacted(captured):
    """Secrets inside a logged exception's traceback are redacted while the exception type remains."""
    stream, _ = captured
    try:
        raise RuntimeError("login failed for hunter2-password")
    except RuntimeError:
        logging.getLogger("x").exception("boom")
    assert "hunter2" not in stream.getvalue() and "RuntimeError" in stream.getvalue()


def test_lines_carry_component_and_correlation_id(captured):
    """Each JSON log line carries level, message, component and the active correlation id."""
    stream, _ = captured
    with correlation("abc123def"):
        logging.getLogger("x").info("inside")
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["component"] == "test" and record["correlation_id"] == "abc123def"
    assert record["level"] == "INFO" and record["message"] == "inside"


def test_url_password_with_unencoded_at_signs_is_redacted_whole(captured):
    """redis://user:p@ss@w0rd@host: redaction runs to the LAST '@' of the authority, in
    the log layer and in describe()/secrets()."""
    from email_ingestion.common.redis_client import describe
    from email_ingestion.common.settings import RedisSettings, Settings
    stream, _ = captured
    url = "redis://app:p@ss@w0rd-x@127.0.0.1:6379/0"
    logging.getLogger("x").warning("connecting to %s", url)
    assert "p@ss" not in stream.getvalue() and "w0rd-x" not in stream.getvalue()
    assert "127.0.0.1:6379/0" in stream.getvalue()
    settings = RedisSettings(url=url)
    assert describe(settings) == "redis://127.0.0.1:6379/0"
    assert "p@ss@w0rd-x" in Settings.secrets(SimpleNamespace(  # type: ignore[arg-type]
        imap=SimpleNamespace(password=None), google=SimpleNamespace(client_secret=None), redis=settings,
        retry=SimpleNamespace(webhook_secret=None)))


def test_json_timestamps_are_iso_utc_with_milliseconds(captured, monkeypatch):
    """JSON log lines carry `ts` as ISO 8601 UTC with milliseconds and a Z, whatever the local zone."""
    import re
    import time
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    stream, _ = captured
    logging.getLogger("x").info("hello")
    monkeypatch.delenv("TZ")
    time.tzset()
    ts = json.loads(stream.getvalue().splitlines()[-1])["ts"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", ts), ts
    import datetime as dt
    parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 60
