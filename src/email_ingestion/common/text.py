"""Bytes to text and instants to ISO-8601: the one spelling of each."""

from __future__ import annotations

import datetime as dt


def to_text(value: object) -> str:
    """Redis and IMAP hand back bytes or str (or None); undecodable bytes become U+FFFD."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def iso_utc(when: dt.datetime | None) -> str | None:
    """An aware datetime as ISO-8601 UTC with a Z; a naive one is taken as UTC."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def iso_from_epoch_s(epoch_s: float) -> str:
    return iso_utc(dt.datetime.fromtimestamp(epoch_s, dt.UTC)) or ""


def ms_from_iso(value: str) -> int:
    """Milliseconds since the epoch of an ISO-8601 instant (Z or an offset)."""
    return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def human_duration(seconds: float | None) -> str:
    """A duration a person reads at a glance: 850ms, 42s, 4m 1s, 2h 5m, 3d 4h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    for unit_s, name, sub_s, sub in ((86_400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if whole >= unit_s:
            rest = (whole % unit_s) // sub_s
            return f"{whole // unit_s}{name}" + (f" {rest}{sub}" if rest else "")
    return f"{whole}s"


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """Text safe to print on a terminal: control characters (C0, DEL, C1: ESC starts ANSI
    sequences that clear the screen, move the cursor or set the window title) and bidi
    overrides become visible escapes. Message-IDs and error texts come from strangers' mail."""
    text = to_text(value)
    return "".join(_escape(ch, keep_newlines) for ch in text)


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str, keep_newlines: bool) -> str:
    code = ord(ch)
    if (keep_newlines and ch == "\n") or not (code < 0x20 or 0x7F <= code <= 0x9F or ch in _BIDI):
        return ch
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
