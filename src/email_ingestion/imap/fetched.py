"""One fetched message as a small immutable record, made once at the IMAP boundary.

imapclient (and fetch_response.py's fast path) hand a FETCH answer over as a dict keyed by
raw item names (`b"BODY[]"`, `b"BODY[1.2]<0>"`) whose values depend on the server: bytes or
int, FixedOffset datetimes, nested tuples. Everything behind this module reads attributes
instead, as imapclient's own `response_types` records (Envelope, Address) are read.

Each item is read on its own: an item a server sends that cannot be read (a junk size, an
INTERNALDATE that overflows in UTC, a BODYSTRUCTURE of the wrong shape) costs that item
only and is named in `defects`, so a message is never lost to what the server said about it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from imapclient.imap_utf7 import decode as decode_utf7

from email_ingestion.common.text import to_text
from email_ingestion.imap.bodystructure import PartInfo, walk

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """What one UID FETCH said about one message; absent items are None or empty."""

    uid: int
    size: int | None = None  # RFC822.SIZE
    internal_date: dt.datetime | None = None  # INTERNALDATE, aware and in UTC
    flags: tuple[str, ...] = ()
    body: bytes | None = None  # BODY[]: the whole message
    header: bytes | None = None  # BODY[HEADER] or BODY[HEADER.FIELDS (...)]
    parts: tuple[PartInfo, ...] = ()  # BODYSTRUCTURE's leaf parts, in order
    sections: tuple[tuple[str, bytes], ...] = ()  # partial fetches: BODY[1.2]<0> as ("1.2", data)
    gmail_msgid: str | None = None
    gmail_thrid: str | None = None
    gmail_labels: tuple[str, ...] = ()
    defects: tuple[str, ...] = field(default=())  # items present but unreadable

    @property
    def expunged(self) -> bool:
        """Dovecot answers a UID expunged after the SEARCH with BODY[] NIL, RFC822.SIZE 0 and
        INTERNALDATE 1970, and `OK [EXPUNGEISSUED]` (RFC 5530): a message that is gone."""
        return self.body is None and self.header is None and not self.size

    def section(self, name: str) -> bytes | None:
        return next((data for key, data in self.sections if key == name), None)

    def with_sections(self, other: FetchedMessage) -> FetchedMessage:
        """This message with the partial body sections of a later FETCH of the same UID."""
        return replace(self, sections=self.sections + other.sections, defects=self.defects + other.defects)


def fetched_message(uid: int, items: Mapping[bytes, Any]) -> FetchedMessage:
    """The record of one message from its FETCH items (as imapclient keys them)."""
    defects: list[str] = []

    def read(item: bytes, convert: Callable[[Any], T], default: T) -> T:
        if item not in items:
            return default
        try:
            return convert(items[item])
        except Exception as exc:  # noqa: BLE001 - a broken item costs that item only
            defects.append(f"unreadable {item.decode('ascii', 'replace')}: {type(exc).__name__}")
            return default

    body, header, sections = _contents(items)
    return FetchedMessage(
        uid=uid, size=read(b"RFC822.SIZE", _size, None), internal_date=read(b"INTERNALDATE", internal_date, None),
        flags=read(b"FLAGS", _texts, ()), body=body, header=header,
        parts=read(b"BODYSTRUCTURE", _parts, ()), sections=sections,
        gmail_msgid=read(b"X-GM-MSGID", gmail_id, None), gmail_thrid=read(b"X-GM-THRID", gmail_id, None),
        gmail_labels=read(b"X-GM-LABELS", _labels, ()), defects=tuple(defects))


def fetched_messages(answer: Mapping[int, Mapping[bytes, Any]]) -> dict[int, FetchedMessage]:
    return {uid: fetched_message(uid, items) for uid, items in answer.items()}


def _contents(items: Mapping[bytes, Any]) -> tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]:
    body = header = None
    sections: list[tuple[str, bytes]] = []
    for key, value in items.items():
        if not (isinstance(key, bytes) and key.startswith(b"BODY[")) or value is None:
            continue
        name = key[5:key.index(b"]")].decode("ascii", "replace") if b"]" in key else ""
        data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else to_text(value).encode()
        if name == "":
            body = data
        elif name.upper().startswith("HEADER"):
            header = data
        else:
            sections.append((name, data))
    return body, header, tuple(sections)


def internal_date(value: Any) -> dt.datetime | None:
    """INTERNALDATE as an aware UTC datetime (plain UTC also pickles; imapclient's FixedOffset
    does not); raises OverflowError where UTC is out of range (year 9999, negative offset)."""
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def gmail_id(value: Any) -> str | None:
    return None if value is None else str(int(value)) if isinstance(value, int) else to_text(value)


def _size(value: Any) -> int | None:
    return None if value is None else int(value)


def _texts(values: Any) -> tuple[str, ...]:
    return tuple(to_text(value) for value in values or ())


def _labels(values: Any) -> tuple[str, ...]:
    # Gmail labels are mailbox names: modified UTF-7 (RFC 3501 §5.1.3).
    return tuple(decode_utf7(v) if isinstance(v, bytes) else str(v) for v in values or ())


def _parts(structure: Any) -> tuple[PartInfo, ...]:
    return tuple(walk(structure or ()))
