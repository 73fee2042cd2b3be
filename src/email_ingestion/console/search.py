"""Find a message by Message-ID, X-GM-MSGID, stream id or idempotency key, wherever it is
now: on the stream, in the retry schedule or in the DLQ.

Redis has no index on payload fields, so the stream is read newest first, at most
CONSOLE_SEARCH_MAX_ENTRIES entries, and each payload is first matched as bytes (cheap) and
parsed only when the bytes hold the query. The answer says when the limit cut the read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import redis

from email_ingestion.common import entry_fields as F
from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.payload import payload_fields
from email_ingestion.common.stream_pages import StreamPages
from email_ingestion.common.text import to_text
from email_ingestion.console.dead_letters import is_entry_id

MAX_QUERY_CHARS = 998  # RFC 5322's line limit: no header value we search for is longer
PAGE = 1000
Kind = Literal["any", "message_id", "gmail_msgid", "stream_id", "idempotency_key"]
KINDS: tuple[Kind, ...] = ("any", "message_id", "gmail_msgid", "stream_id", "idempotency_key")


class BadQuery(ValueError):
    """The query cannot be searched for (too long, control characters, unknown kind)."""


@dataclass(frozen=True)
class Hit:
    where: str  # stream | retries | dlq
    id: str
    account: str
    mailbox: str
    uid: str
    message_id: str
    gmail_msgid: str
    idempotency_key: str
    subject: str  # content: shown to admins only
    status: str = ""  # on the stream: pending (delivered, not acknowledged), acknowledged, or waiting (unread)


@dataclass(frozen=True)
class Found:
    hits: list[Hit]
    stream_entries_read: int
    stream_truncated: bool


def check_query(text: str, kind: str) -> tuple[str, Kind]:
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(f"a query is at most {MAX_QUERY_CHARS} characters")
    # Checked before stripping: CR/LF around a pasted id is as suspect as inside it.
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadQuery("a query must not hold control characters")
    query = text.strip()
    if not query:
        raise BadQuery("type a Message-ID, X-GM-MSGID, stream id or idempotency key")
    for known in KINDS:
        if kind == known:
            return query, known
    raise BadQuery("unknown kind of id")


def _matches(payload: dict[str, Any], query: str, kind: Kind) -> bool:
    # Message-IDs are compared without their angle brackets, which people often leave off.
    found = {"message_id": str(payload.get("message_id") or "").strip("<>") == query.strip("<>"),
             "gmail_msgid": str(payload.get("gmail_msgid") or "") == query,
             "idempotency_key": payload.get("idempotency_key") == query}
    return any(found.values()) if kind == "any" else found.get(kind, False)


def _hit(where: str, entry_id: str, payload: dict[str, Any]) -> Hit:
    text = {name: str(payload.get(name) or "") for name in (
        "account", "mailbox", "uid", "message_id", "gmail_msgid", "idempotency_key", "subject")}
    return Hit(where, entry_id, **text)


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _needle(query: str) -> bytes:
    """The query as it appears inside a JSON string (quotes and backslashes escaped)."""
    return json.dumps(query.strip("<>"), ensure_ascii=False)[1:-1].encode()


class Searcher:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys, max_entries: int) -> None:
        self.redis = client
        self.keys = keys
        self.max_entries = max_entries

    def search(self, query: str, kind: Kind) -> Found:
        hits: list[Hit] = []
        read, truncated = 0, False
        if kind in ("any", "stream_id") and is_entry_id(query):
            hits += self._by_stream_id(query)
        if kind != "stream_id":
            stream_hits, read, truncated = self._scan_stream(query, kind)
            hits += stream_hits
            hits += self._scan_retries(query, kind) + self._scan_dlq(query, kind)
        return Found([self._with_status(hit) for hit in hits], read, truncated)

    def _with_status(self, hit: Hit) -> Hit:
        """Where a stream entry stands in the group: in its PEL, acknowledged, or not yet read."""
        if hit.where != "stream":
            return hit
        try:
            groups = {to_text(g["name"]): g for g in self.redis.xinfo_groups(self.keys.stream)}
        except redis.ResponseError:
            return dataclasses.replace(hit, status="waiting (no group yet)")
        group = groups.get(self.keys.group)
        if group is None:
            return dataclasses.replace(hit, status="waiting (no group yet)")
        if self.redis.xpending_range(self.keys.stream, self.keys.group, min=hit.id, max=hit.id, count=1):
            return dataclasses.replace(hit, status="pending")
        delivered = _id_tuple(to_text(group["last-delivered-id"])) >= _id_tuple(hit.id)
        return dataclasses.replace(hit, status="acknowledged" if delivered else "waiting")

    def _by_stream_id(self, entry_id: str) -> list[Hit]:
        hits = []
        direct: Any = self.redis.xrange(self.keys.stream, entry_id, entry_id)
        for entry, fields in direct:
            hits.append(_hit("stream", to_text(entry), payload_fields(fields.get(F.PAYLOAD.encode(), b""))))
        for entry, fields in self._dlq_entries():
            if to_text(entry) == entry_id or to_text(fields.get(F.ORIGINAL_ID.encode())) == entry_id:
                hits.append(_hit("dlq", to_text(entry), payload_fields(fields.get(F.PAYLOAD.encode(), b""))))
        for read, (record_id, record) in enumerate(self.redis.hscan_iter(self.keys.retry_payloads, count=PAGE)):
            if read >= self.max_entries:
                break
            data = payload_fields(record)
            if to_text(record_id) == entry_id or data.get(F.ORIGINAL_ID) == entry_id:
                hits.append(_hit("retries", to_text(record_id), payload_fields(str(data.get(F.PAYLOAD) or ""))))
        return hits

    def _scan_stream(self, query: str, kind: Kind) -> tuple[list[Hit], int, bool]:
        needle, hits = _needle(query), []
        newest = StreamPages(self.redis, self.keys.stream, page_size=PAGE, newest_first=True,
                             max_entries=self.max_entries)
        for entry, fields in newest:
            raw = fields.get(F.PAYLOAD.encode(), b"")
            if needle in raw and _matches(payload := payload_fields(raw), query, kind):
                hits.append(_hit("stream", to_text(entry), payload))
        return hits, newest.read, newest.truncated

    def _scan_retries(self, query: str, kind: Kind) -> list[Hit]:
        # Every record is parsed: the payload is JSON inside JSON there, so the byte check
        # would miss ids with quotes, and the schedule is short.
        hits = []
        for read, (record_id, record) in enumerate(self.redis.hscan_iter(self.keys.retry_payloads, count=PAGE)):
            if read >= self.max_entries:
                break
            payload = payload_fields(str(payload_fields(record).get(F.PAYLOAD) or ""))
            if _matches(payload, query, kind):
                hits.append(_hit("retries", to_text(record_id), payload))
        return hits

    def _scan_dlq(self, query: str, kind: Kind) -> list[Hit]:
        needle, hits = _needle(query), []
        for entry, fields in self._dlq_entries():
            raw = fields.get(F.PAYLOAD.encode(), b"")
            if needle in raw and _matches(payload := payload_fields(raw), query, kind):
                hits.append(_hit("dlq", to_text(entry), payload))
        return hits

    def _dlq_entries(self) -> Iterator[tuple[Any, dict[bytes, bytes]]]:
        return iter(StreamPages(self.redis, self.keys.dlq, page_size=PAGE, max_entries=self.max_entries))
