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
