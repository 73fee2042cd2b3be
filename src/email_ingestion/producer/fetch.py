"""UIDs -> payloads: batched UID FETCH, parsing, and the dedup fingerprint of each message.

One UID FETCH per batch for ordinary messages (`BODY.PEEK[]`, so nothing is marked
\\Seen). Messages above `LARGE_MESSAGE_BYTES` are not downloaded whole: one FETCH of
their header and BODYSTRUCTURE for the batch, then the first bytes of their text parts.
"""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imapclient.imap_utf7 import decode as decode_utf7

from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import Address, Attachment, EmailPayload
from email_ingestion.common.settings import ProducerSettings
from email_ingestion.common.text import iso_utc, to_text
from email_ingestion.imap import bodystructure
from email_ingestion.imap.session import ImapSession
from email_ingestion.mail.parse import ParsedMessage, TextPart, parse_headers, parse_message, parse_partial
from email_ingestion.producer.state import Emission

log = logging.getLogger(__name__)

_BASE_ITEMS = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
_GMAIL_ITEMS = ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"]
_FINGERPRINT_HEADERS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)]"


_PARTS = "text_parts"  # key under which download() keeps a large message's fetched text parts


@dataclass(frozen=True)
class Downloaded:
    """The raw FETCH responses of one batch, in UID order."""

    messages: list[tuple[int, dict[Any, Any]]]


@dataclass(frozen=True)
class MessageMeta:
    uid: int
    fingerprint: str
    internal_date_ms: int


def fingerprint(identity: str, internal_date: str | None, size: int, gmail_msgid: str | None) -> str:
    """Identity of a message that survives a UIDVALIDITY change.

    Gmail's X-GM-MSGID when the server has it; otherwise Message-ID + INTERNALDATE + size,
    with Date/From/Subject standing in for a missing Message-ID.
    """
    if gmail_msgid:
        return f"gm:{gmail_msgid}"
    digest = hashlib.sha256(f"{identity}|{internal_date}|{size}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"h:{digest[:32]}"


class MessageFetcher:
    def __init__(self, session: ImapSession, settings: ProducerSettings, account: str, mailbox: str) -> None:
        self.session = session
        self.settings = settings
        self.account = account
        self.mailbox = mailbox

    def _items(self, *extra: str) -> list[str]:
        return _BASE_ITEMS + (_GMAIL_ITEMS if self.session.is_gmail else []) + list(extra)

    def download(self, uids: Sequence[int], large: set[int]) -> Downloaded:
        """All the IMAP I/O for a batch (so it can run ahead of parsing, in another thread).
        UIDs the server no longer has are skipped."""
        small = [uid for uid in uids if uid not in large]
        big = [uid for uid in uids if uid in large]
        responses = self.session.fetch(small, self._items("BODY.PEEK[]"))
        if big:
            for uid, data in self.session.fetch(big, self._items("BODYSTRUCTURE", "BODY.PEEK[HEADER]")).items():
                responses[uid] = {**data, _PARTS: self._fetch_text_parts(uid, data)}
        for data in responses.values():
            # A plain UTC datetime pickles (imapclient's FixedOffset does not), for builder.py.
            data[b"INTERNALDATE"] = _internal_date(data.get(b"INTERNALDATE"))
        missing = [uid for uid in uids if uid not in responses]
        if missing:
            log.warning("messages vanished between SEARCH and FETCH (expunged)", extra={"uids": missing[:20]})
        return Downloaded([(uid, responses[uid]) for uid in uids if uid in responses])

    def build(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> list[Emission]:
        """Parse and serialise a downloaded batch: CPU only, no I/O."""
        return [self._emission(uid, data, uidvalidity, pass_id) for uid, data in downloaded.messages]

    def metadata(self, uids: Sequence[int]) -> list[MessageMeta]:
        """Fingerprints and arrival times only: a cheap FETCH for re-synchronisation."""
        items = ["INTERNALDATE", "RFC822.SIZE", _FINGERPRINT_HEADERS]
        if self.session.is_gmail:
            items.append("X-GM-MSGID")
        result = []
        for uid, data in sorted(self.session.fetch(uids, items).items()):
            header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), b"")
            internal = _internal_date(data.get(b"INTERNALDATE"))
            identity = parse_headers(email.message_from_bytes(header or b"")).identity
            fp = fingerprint(identity, iso_utc(internal),
                             int(data.get(b"RFC822.SIZE", 0)), _gm(data.get(b"X-GM-MSGID")))
            result.append(MessageMeta(uid, fp, int(internal.timestamp() * 1000) if internal else 0))
        return result

    def _emission(self, uid: int, data: dict[Any, Any], uidvalidity: int, pass_id: str) -> Emission:
        with correlation(f"{pass_id}.{uid}") as correlation_id:
            raw = data.get(b"BODY[]")
            size = int(data.get(b"RFC822.SIZE", len(raw or b"")))
            parsed = parse_message(raw or b"") if _PARTS not in data else self._parse_large(data, size)
            internal = iso_utc(_internal_date(data.get(b"INTERNALDATE")))
            gm_msgid = _gm(data.get(b"X-GM-MSGID"))
            payload = self._payload(uid, uidvalidity, data, parsed, internal, size, gm_msgid, correlation_id)
            if parsed.defects:
                log.info("message parsed with defects", extra={"uid": uid, "defects": parsed.defects[:10]})
            return Emission(fingerprint(parsed.identity, internal, size, gm_msgid), uid, payload.to_json())

    def _fetch_text_parts(self, uid: int, data: dict[bytes, Any]) -> list[TextPart]:
        """The first bytes of the text parts of a large message; attachments stay on the server."""
        parts = list(bodystructure.walk(data.get(b"BODYSTRUCTURE") or ()))
        texts = _first_of_each(p for p in parts if p.is_body_text)
        limit = self.settings.preview_fetch_bytes
        items = [f"BODY.PEEK[{p.section}]<0.{limit}>" for p in texts]
        fetched = self.session.fetch([uid], items).get(uid, {}) if items else {}
        return [TextPart(p.content_type, p.charset, p.encoding, fetched.get(f"BODY[{p.section}]<0>".encode(), b""),
                         complete=p.size <= limit) for p in texts]

    def _parse_large(self, data: dict[Any, Any], size: int) -> ParsedMessage:
        parts = list(bodystructure.walk(data.get(b"BODYSTRUCTURE") or ()))
        attachments = [p.attachment() for p in parts if not p.is_body_text]
        return parse_partial(data.get(b"BODY[HEADER]") or b"", data[_PARTS], attachments, size)

    def _payload(self, uid: int, uidvalidity: int, data: dict[bytes, Any], parsed: ParsedMessage,
                 internal: str | None, size: int, gm_msgid: str | None, correlation_id: str) -> EmailPayload:
        key = f"gm:{self.account}:{gm_msgid}" if gm_msgid else f"imap:{self.account}:{self.mailbox}:{uidvalidity}:{uid}"
        return EmailPayload(
            idempotency_key=key, account=self.account, mailbox=self.mailbox, uid=uid, uidvalidity=uidvalidity,
            message_id=parsed.message_id, gmail_msgid=gm_msgid, gmail_thrid=_gm(data.get(b"X-GM-THRID")),
            gmail_labels=[_label(label) for label in data.get(b"X-GM-LABELS") or ()],
            **{"from": _address(parsed.from_)},
            to=[_address(a) for a in parsed.to], cc=[_address(a) for a in parsed.cc],
            reply_to=[_address(a) for a in parsed.reply_to], subject=parsed.subject, date=parsed.date,
            internal_date=internal, size=size, flags=[to_text(flag) for flag in data.get(b"FLAGS") or ()],
            headers=parsed.headers, body_text=parsed.body_text, body_html_preview=parsed.body_html_preview,
            body_truncated=parsed.body_truncated,
            attachments=[Attachment(filename=a.filename, content_type=a.content_type, size=a.size)
                         for a in parsed.attachments],
            parse_defects=parsed.defects, fetched_at=iso_utc(dt.datetime.now(dt.UTC)) or "",
            correlation_id=correlation_id,
        )


def _first_of_each(parts: Any) -> list[bodystructure.PartInfo]:
    chosen: dict[str, bodystructure.PartInfo] = {}
    for part in parts:
        chosen.setdefault(part.content_type, part)
    return list(chosen.values())


def _address(pair: tuple[str, str] | None) -> Address | None:
    return Address(name=pair[0], address=pair[1]) if pair else None


def _internal_date(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _gm(value: Any) -> str | None:
    return None if value is None else str(int(value)) if isinstance(value, int) else to_text(value)


def _label(value: Any) -> str:
    # Gmail labels are mailbox names: modified UTF-7 (RFC 3501 §5.1.3).
    return decode_utf7(value) if isinstance(value, bytes) else str(value)
