"""IMAP batch I/O: batched UID FETCH of whole messages, or of header, BODYSTRUCTURE and
the first bytes of the text parts for large ones; and the cheap metadata FETCH of a re-sync.

One UID FETCH per batch for ordinary messages (`BODY.PEEK[]`, so nothing is marked
\\Seen). Messages above `LARGE_MESSAGE_BYTES` are not downloaded whole. Turning the
responses into payloads is payloads.py's job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

from email_ingestion.common.settings import ProducerSettings
from email_ingestion.common.text import iso_utc
from email_ingestion.imap import bodystructure
from email_ingestion.imap.session import ImapSession
from email_ingestion.mail.parse import TextPart
from email_ingestion.producer.identity import HEADER_FIELDS_ITEM, fingerprint, legacy_fingerprint
from email_ingestion.producer.payloads import TEXT_PARTS, Downloaded, gmail_id, internal_date

log = logging.getLogger(__name__)

_BASE_ITEMS = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
_GMAIL_ITEMS = ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"]


@dataclass(frozen=True)
class MessageMeta:
    """What a re-sync needs to know of a message before deciding to download it."""

    uid: int
    fingerprint: str
    legacy_fingerprint: str  # as versions before issue 9 stored it (see identity.py)
    internal_date_ms: int


class MessageFetcher:
    def __init__(self, *, session: ImapSession, settings: ProducerSettings) -> None:
        self.session = session
        self.settings = settings

    def _items(self, *extra: str) -> list[str]:
        return _BASE_ITEMS + (_GMAIL_ITEMS if self.session.is_gmail else []) + list(extra)

    def download(self, uids: Sequence[int], large: Set[int]) -> Downloaded:
        """All the IMAP I/O for a batch (so it can run ahead of parsing, in another thread).
        UIDs the server no longer has are skipped, never emitted."""
        small = [uid for uid in uids if uid not in large]
        big = [uid for uid in uids if uid in large]
        responses: dict[int, dict[Any, Any]] = dict(self.session.fetch(small, self._items("BODY.PEEK[]")))
        if big:
            for uid, data in self.session.fetch(big, self._items("BODYSTRUCTURE", "BODY.PEEK[HEADER]")).items():
                responses[uid] = {**data, TEXT_PARTS: self._fetch_text_parts(uid, data)}
        for data in responses.values():
            # A plain UTC datetime pickles (imapclient's FixedOffset does not), for build_site.py.
            data[b"INTERNALDATE"] = internal_date(data.get(b"INTERNALDATE"))
        kept = [(uid, responses[uid]) for uid in uids if uid in responses and not _expunged(responses[uid])]
        if len(kept) < len(uids):
            gone = sorted(set(uids) - {uid for uid, _ in kept})
            log.warning("messages expunged between SEARCH and FETCH: skipped",
                        extra={"count": len(gone), "uids": gone[:20]})
        return Downloaded(kept)

    def metadata(self, uids: Sequence[int]) -> list[MessageMeta]:
        """Fingerprints and arrival times only: a cheap, header-only FETCH for re-synchronisation."""
        items = ["INTERNALDATE", "RFC822.SIZE", HEADER_FIELDS_ITEM]
        if self.session.is_gmail:
            items.append("X-GM-MSGID")
        result = []
        for uid, data in sorted(self.session.fetch(uids, items).items()):
            header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), None)
            size = int(data.get(b"RFC822.SIZE") or 0)
            if header is None and size == 0:
                continue  # expunged since the SEARCH: nothing to decide
            internal = internal_date(data.get(b"INTERNALDATE"))
            result.append(MessageMeta(
                uid, fingerprint(header or b"", size, gmail_id(data.get(b"X-GM-MSGID"))),
                legacy_fingerprint(header or b"", iso_utc(internal), size),
                int(internal.timestamp() * 1000) if internal else 0))
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


def _expunged(data: dict[Any, Any]) -> bool:
    """Dovecot answers a UID expunged after the SEARCH with BODY[] NIL, RFC822.SIZE 0 and
    INTERNALDATE 1970, and `OK [EXPUNGEISSUED]` (RFC 5530): a message that is gone."""
    content = data.get(b"BODY[]", data.get(b"BODY[HEADER]"))
    return content is None and not data.get(b"RFC822.SIZE")


def _first_of_each(parts: Any) -> list[bodystructure.PartInfo]:
    chosen: dict[str, bodystructure.PartInfo] = {}
    for part in parts:
        chosen.setdefault(part.content_type, part)
    return list(chosen.values())
