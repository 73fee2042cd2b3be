"""IMAP batch I/O: batched UID FETCH of whole messages, or of header, BODYSTRUCTURE and
the first bytes of the text parts for large ones; and the cheap metadata FETCH of a re-sync.

One UID FETCH per batch for ordinary messages (`BODY.PEEK[]`, so nothing is marked
\\Seen). Messages above `LARGE_MESSAGE_BYTES` are not downloaded whole. Turning the
responses into payloads is payloads.py's job.
"""

from __future__ import annotations

import email
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from email_ingestion.common.settings import ProducerSettings
from email_ingestion.common.text import iso_utc
from email_ingestion.imap import bodystructure
from email_ingestion.imap.session import ImapSession
from email_ingestion.mail.parse import TextPart, parse_headers
from email_ingestion.producer.payloads import TEXT_PARTS, Downloaded, fingerprint, gmail_id, internal_date

log = logging.getLogger(__name__)

_BASE_ITEMS = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
_GMAIL_ITEMS = ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"]
_FINGERPRINT_HEADERS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)]"


@dataclass(frozen=True)
class MessageMeta:
    uid: int
    fingerprint: str
    internal_date_ms: int


class MessageFetcher:
    def __init__(self, *, session: ImapSession, settings: ProducerSettings) -> None:
        self.session = session
        self.settings = settings

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
                responses[uid] = {**data, TEXT_PARTS: self._fetch_text_parts(uid, data)}
        for data in responses.values():
            # A plain UTC datetime pickles (imapclient's FixedOffset does not), for build_site.py.
            data[b"INTERNALDATE"] = internal_date(data.get(b"INTERNALDATE"))
        missing = [uid for uid in uids if uid not in responses]
        if missing:
            log.warning("messages vanished between SEARCH and FETCH (expunged)", extra={"uids": missing[:20]})
        return Downloaded([(uid, responses[uid]) for uid in uids if uid in responses])

    def metadata(self, uids: Sequence[int]) -> list[MessageMeta]:
        """Fingerprints and arrival times only: a cheap FETCH for re-synchronisation."""
        items = ["INTERNALDATE", "RFC822.SIZE", _FINGERPRINT_HEADERS]
        if self.session.is_gmail:
            items.append("X-GM-MSGID")
        result = []
        for uid, data in sorted(self.session.fetch(uids, items).items()):
            header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), b"")
            internal = internal_date(data.get(b"INTERNALDATE"))
            identity = parse_headers(email.message_from_bytes(header or b"")).identity
            fp = fingerprint(identity, iso_utc(internal),
                             int(data.get(b"RFC822.SIZE", 0)), gmail_id(data.get(b"X-GM-MSGID")))
            result.append(MessageMeta(uid, fp, int(internal.timestamp() * 1000) if internal else 0))
        return result

    def _fetch_text_parts(self, uid: int, data: dict[bytes, Any]) -> list[TextPart]:
        """The first bytes of the text parts of a large message; attachments stay on the server."""
        parts = list(bodystructure.walk(data.get(b"BODYSTRUCTURE") or ()))
        texts = _first_of_each(p for p in parts if p.is_body_text)
        limit = self.settings.preview_fetch_bytes
        items = [f"BODY.PEEK[{p.section}]<0.{limit}>" for p in texts]
        fetched = self.session.fetch([uid], items).get(uid, {}) if items else {}
        return [TextPart(p.content_type, p.charset, p.encoding, fetched.get(f"BODY[{p.section}]<0>".encode(), b""),
                         complete=p.size <= limit) for p in texts]


def _first_of_each(parts: Any) -> list[bodystructure.PartInfo]:
    chosen: dict[str, bodystructure.PartInfo] = {}
    for part in parts:
        chosen.setdefault(part.content_type, part)
    return list(chosen.values())
