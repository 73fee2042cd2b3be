"""Raw FETCH data -> stream payloads: parsing, mapping and the dedup fingerprint (identity.py).

Pure: no sockets and no Redis, so it runs inline or in the helper process that
build_site.py starts, and the tests drive it with bytes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imapclient.imap_utf7 import decode as decode_utf7

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import Address, Attachment, EmailPayload
from email_ingestion.common.text import iso_utc, to_text
from email_ingestion.imap import bodystructure
from email_ingestion.mail.parse import ParsedMessage, parse_message, parse_partial
from email_ingestion.producer.identity import fingerprint

log = logging.getLogger(__name__)

TEXT_PARTS = "text_parts"  # key under which the fetcher keeps a large message's fetched text parts


@dataclass(frozen=True)
class Downloaded:
    """The raw FETCH responses of one batch, in UID order."""

    messages: list[tuple[int, dict[Any, Any]]]


@dataclass(frozen=True)
class Emission:
    """One message ready to append: its dedup fingerprint, UID and payload JSON."""

    fingerprint: str
    uid: int
    payload: str


class PayloadBuilder:
    """Builds the payloads of one mailbox; CPU only."""

    def __init__(self, *, account: str, mailbox: str, clock_ms: Clock = wall_ms) -> None:
        self.account = account
        self.mailbox = mailbox
        self.clock_ms = clock_ms

    def build(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> list[Emission]:
        return [self._emission(uid, data, uidvalidity, pass_id) for uid, data in downloaded.messages]

    def _emission(self, uid: int, data: dict[Any, Any], uidvalidity: int, pass_id: str) -> Emission:
        with correlation(f"{pass_id}.{uid}") as correlation_id:
            raw = data.get(b"BODY[]")
            size = int(data.get(b"RFC822.SIZE", len(raw or b"")))
            parsed = parse_message(raw or b"") if TEXT_PARTS not in data else _parse_large(data, size)
            internal = iso_utc(internal_date(data.get(b"INTERNALDATE")))
            gm_msgid = gmail_id(data.get(b"X-GM-MSGID"))
            payload = self.payload(uid, uidvalidity, data, parsed, internal, size, gm_msgid, correlation_id)
            if parsed.defects:
                log.info("message parsed with defects", extra={"uid": uid, "defects": parsed.defects[:10]})
            header = raw if TEXT_PARTS not in data else data.get(b"BODY[HEADER]")
            return Emission(fingerprint(header or b"", size, gm_msgid), uid, payload.to_json())

    def payload(self, uid: int, uidvalidity: int, data: dict[bytes, Any], parsed: ParsedMessage,
                internal: str | None, size: int, gm_msgid: str | None, correlation_id: str) -> EmailPayload:
        key = f"gm:{self.account}:{gm_msgid}" if gm_msgid else f"imap:{self.account}:{self.mailbox}:{uidvalidity}:{uid}"
        return EmailPayload(
            idempotency_key=key, account=self.account, mailbox=self.mailbox, uid=uid, uidvalidity=uidvalidity,
            message_id=parsed.message_id, gmail_msgid=gm_msgid, gmail_thrid=gmail_id(data.get(b"X-GM-THRID")),
            gmail_labels=[_label(label) for label in data.get(b"X-GM-LABELS") or ()],
            from_=_address(parsed.from_),
            to=_addresses(parsed.to), cc=_addresses(parsed.cc),
            reply_to=_addresses(parsed.reply_to), subject=parsed.subject, date=parsed.date,
            internal_date=internal, size=size, flags=[to_text(flag) for flag in data.get(b"FLAGS") or ()],
            headers=parsed.headers, body_text=parsed.body_text, body_html_preview=parsed.body_html_preview,
            body_truncated=parsed.body_truncated,
            attachments=[Attachment(filename=a.filename, content_type=a.content_type, size=a.size)
                         for a in parsed.attachments],
            parse_defects=parsed.defects, fetched_at=_iso_ms(self.clock_ms), correlation_id=correlation_id,
        )


def _parse_large(data: dict[Any, Any], size: int) -> ParsedMessage:
    parts = list(bodystructure.walk(data.get(b"BODYSTRUCTURE") or ()))
    attachments = [p.attachment() for p in parts if not p.is_body_text]
    return parse_partial(data.get(b"BODY[HEADER]") or b"", data[TEXT_PARTS], attachments, size)


def _iso_ms(clock_ms: Callable[[], int]) -> str:
    return iso_utc(dt.datetime.fromtimestamp(clock_ms() / 1000, dt.UTC)) or ""


def _address(pair: tuple[str, str] | None) -> Address | None:
    return Address(name=pair[0], address=pair[1]) if pair else None


def _addresses(pairs: list[tuple[str, str]]) -> list[Address]:
    return [Address(name=name, address=address) for name, address in pairs]


def internal_date(value: Any) -> dt.datetime | None:
    """INTERNALDATE as an aware UTC datetime (plain UTC also pickles; imapclient's FixedOffset does not)."""
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def gmail_id(value: Any) -> str | None:
    return None if value is None else str(int(value)) if isinstance(value, int) else to_text(value)


def _label(value: Any) -> str:
    # Gmail labels are mailbox names: modified UTF-7 (RFC 3501 §5.1.3).
    return decode_utf7(value) if isinstance(value, bytes) else str(value)
