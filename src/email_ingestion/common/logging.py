"""Logging set-up: JSON lines (or text for terminals), a component and a correlation id on every
line, and secrets redacted at the handler so no code path can leak one."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import sys
import uuid
from collections.abc import Iterable

from pythonjsonlogger.json import JsonFormatter

_correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="-")

# Shapes of secrets that can reach a log line through third-party code (imapclient's
# protocol debug lines, requests' errors): XOAUTH2 strings raw and base64 ("user=" is
# "dXNlcj0"), bearer tokens, JWTs, Google tokens, passwords in URLs, key=value credentials.
_PATTERNS = [
    re.compile(r"dXNlcj0[A-Za-z0-9+/=]+"),
    re.compile(r"auth=Bearer\s+[^\x01\s'\"]+", re.I),
    re.compile(r"Bearer\s+[A-Za-z0-9._~+/=-]+", re.I),
    re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    re.compile(r"ya29\.[A-Za-z0-9._-]+"),
    re.compile(r"1//[A-Za-z0-9._-]{10,}"),
    # Up to the LAST "@" before the path: passwords with an unencoded "@" are common (issue 9).
    re.compile(r"(\b[A-Za-z][\w+.-]*://[^/\s:@]*:)\S+(?=@)"),
    re.compile(r"((?:refresh_token|access_token|client_secret|password)[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+", re.I),
]
REDACTED = "[REDACTED]"


def new_correlation_id() -> str:
    return uuid.uuid4().hex[:16]


class correlation:  # noqa: N801 - used like a function: `with correlation(id) as cid:`
    """Every log line inside carries this correlation id. A class rather than a
    @contextmanager: it runs once per message on the worker's hot path."""

    __slots__ = ("value", "_token")

    def __init__(self, correlation_id: str | None = None) -> None:
        self.value = correlation_id or new_correlation_id()

    def __enter__(self) -> str:
        self._token = _correlation_id.set(self.value)
        return self.value

    def __exit__(self, *exc: object) -> None:
        _correlation_id.reset(self._token)


class Redactor(logging.Filter):
    """Replaces known secret values and secret-shaped strings in every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = {s for s in secrets if s}

    def add_secret(self, secret: str) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, self.redact(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _Context(logging.Filter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = getattr(record, "component", self.component)
        record.correlation_id = getattr(record, "correlation_id", _correlation_id.get())
        return True


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def iso_utc_ms(created_s: float) -> str:
    """`2026-12-02T04:02:31.224Z`: ISO 8601, UTC, milliseconds; sorts and parses everywhere,
    unlike the local-time `asctime`."""
    return dt.datetime.fromtimestamp(created_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _UtcTime(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging API
        return iso_utc_ms(record.created)


class _JsonFormatter(_UtcTime, JsonFormatter):
    pass


class _TextFormatter(_UtcTime):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items()
                  if k not in _STANDARD_ATTRS and k not in ("component", "correlation_id")}
        line = super().format(record)
        return line + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else "")


def setup_logging(level: str, fmt: str, component: str, redactor: Redactor) -> None:
    """Configure the root logger once per process (called from main, never at import)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context(component))
    handler.addFilter(redactor)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(component)s %(correlation_id)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(_TextFormatter(
            "%(asctime)s %(levelname)-7s %(component)s [%(correlation_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # imapclient logs every protocol line at DEBUG; keep it off unless asked for explicitly.
    logging.getLogger("imapclient").setLevel(max(logging.INFO, logging.getLevelName(level)))
