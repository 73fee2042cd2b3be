"""IMAP batch I/O: batched UID FETCH of whole messages, or of header, BODYSTRUCTURE and
the first bytes of the text parts for large ones; and the cheap metadata FETCH of a re-sync.

One UID FETCH per batch for ordinary messages (`BODY.PEEK[]`, so nothing is marked
\\Seen). Messages above `LARGE_MESSAGE_BYTES` are not downloaded whole. What comes back is
one FetchedMessage per message (imap/fetched.py); turning them into payloads is
payloads.py's job, and nothing here depends on it.

`download` runs a list of steps, each adding to the batch's FetchedMessages, so a step such
as fetching Gmail's X-GM-MSGID before the bodies slots in without touching the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field

from email_ingestion.common.settings import ProducerSettings
from email_ingestion.common.text import iso_utc
from email_ingestion.imap.bodystructure import body_text_parts
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.imap.session import ImapSession
from email_ingestion.producer.identity import HEADER_FIELDS_ITEM, fingerprint, legacy_fingerprint

log = logging.getLogger(__name__)

_BASE_ITEMS = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
_GMAIL_ITEMS = ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"]


@dataclass(frozen=True)
class Downloaded:
    """The fetched messages of one batch, in UID order."""

    messages: tuple[FetchedMessage, ...]


@dataclass(frozen=True)
class MessageMeta:
    """What a re-sync needs to know of a message before deciding to download it."""

    uid: int
    fingerprint: str
    legacy_fingerprint: str  # as versions before issue 9 stored it (see identity.py)
    internal_date_ms: int


@dataclass
class DownloadRequest:
    """One batch's download in progress, handed from step to step: the UIDs still wanted (a
    step may narrow them, e.g. to skip messages known by a Gmail id), which are large, and
    what has come back."""

    uids: list[int]
    large: frozenset[int]
    fetched: dict[int, FetchedMessage] = field(default_factory=dict)


Step = Callable[[DownloadRequest], None]


class MessageFetcher:
    def __init__(self, *, session: ImapSession, settings: ProducerSettings) -> None:
        self.session = session
        self.settings = settings
        self.steps: list[Step] = [self._fetch_whole, self._fetch_large, self._fetch_text_parts]

    def _items(self, *extra: str) -> list[str]:
        return _BASE_ITEMS + (_GMAIL_ITEMS if self.session.is_gmail else []) + list(extra)

    def download(self, uids: Sequence[int], large: Set[int]) -> Downloaded:
        """All the IMAP I/O for a batch (so it can run ahead of parsing, in another thread).
        UIDs the server no longer has are skipped, never emitted."""
        request = DownloadRequest(list(uids), frozenset(large))
        for step in self.steps:
            step(request)
        kept = tuple(request.fetched[uid] for uid in request.uids if uid in request.fetched
                     and not request.fetched[uid].expunged)
        if len(kept) < len(request.uids):
            gone = sorted(set(request.uids) - {message.uid for message in kept})
            log.warning("messages expunged between SEARCH and FETCH: skipped",
                        extra={"count": len(gone), "uids": gone[:20]})
        return Downloaded(kept)

    def _fetch_whole(self, request: DownloadRequest) -> None:
        small = [uid for uid in request.uids if uid not in request.large]
        if small:
            request.fetched.update(self.session.fetch(small, self._items("BODY.PEEK[]")))

    def _fetch_large(self, request: DownloadRequest) -> None:
        big = [uid for uid in request.uids if uid in request.large]
        if big:
            request.fetched.update(self.session.fetch(big, self._items("BODYSTRUCTURE", "BODY.PEEK[HEADER]")))

    def _fetch_text_parts(self, request: DownloadRequest) -> None:
        """The first bytes of the text parts of large messages; attachments stay on the server."""
        limit = self.settings.preview_fetch_bytes
        for uid in request.uids:
            message = request.fetched.get(uid)
            if uid not in request.large or message is None or message.expunged:
                continue
            items = [f"BODY.PEEK[{p.section}]<0.{limit}>" for p in body_text_parts(message.parts)]
            fetched = self.session.fetch([uid], items).get(uid) if items else None
            if fetched is not None:
                request.fetched[uid] = message.with_sections(fetched)

    def metadata(self, uids: Sequence[int]) -> list[MessageMeta]:
        """Fingerprints and arrival times only: a cheap, header-only FETCH for re-synchronisation."""
        items = ["INTERNALDATE", "RFC822.SIZE", HEADER_FIELDS_ITEM]
        if self.session.is_gmail:
            items.append("X-GM-MSGID")
        result = []
        for uid, message in sorted(self.session.fetch(uids, items).items()):
            if message.header is None and not message.size:
                continue  # expunged since the SEARCH: nothing to decide
            header, size, internal = message.header or b"", message.size or 0, message.internal_date
            result.append(MessageMeta(
                uid, fingerprint(header, size, message.gmail_msgid),
                legacy_fingerprint(header, iso_utc(internal), size),
                int(internal.timestamp() * 1000) if internal else 0))
        return result

