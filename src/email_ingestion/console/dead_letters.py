"""The DLQ as the console shows it: letters grouped by reason, one letter, and plans.

A plan is what a replay or purge will do, shown before it is done. It names its scope (one
letter, a reason, all) and the newest DLQ id it covers (`upto`), so confirming acts on the
letters that were shown, not on letters that arrived in between. Replay and purge themselves
are worker/dlq_admin.py's DlqAdmin, the same code `email-dlq` runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from email_ingestion.common import entry_fields as F
from email_ingestion.common.payload import payload_fields
from email_ingestion.common.stream_pages import StreamPages
from email_ingestion.common.text import to_text
from email_ingestion.worker.dlq_admin import DlqAdmin

ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
PAGE = 500
MAX_READ = 20_000  # a DLQ larger than this is grouped on its oldest entries; the page says so
PREVIEW_IDS = 20
Action = Literal["replay", "purge"]
Scope = Literal["one", "reason", "all"]


def is_entry_id(text: str) -> bool:
    """A stream id Redis accepts: two unsigned 64-bit numbers (a larger one is a Redis error)."""
    if not ENTRY_ID.fullmatch(text):
        return False
    return all(int(part) < 2**64 for part in text.split("-"))


@dataclass(frozen=True)
class Letter:
    """A dead letter's metadata: what any console user may see."""

    id: str
    reason: str
    error_type: str
    attempts: str
    original_id: str
    consumer: str
    account: str
    mailbox: str
    uid: str
    message_id: str
    dead_at_ms: int


@dataclass(frozen=True)
class ReasonGroup:
    reason: str
    count: int
    oldest_ms: int
    newest_ms: int


@dataclass
class Plan:
    action: Action
    scope: Scope
    value: str
    upto: str
    ids: list[str] = field(default_factory=list)

    @property
    def preview(self) -> list[str]:
        return self.ids[:PREVIEW_IDS]


def _pages(client: redis.Redis, dlq: str, upto: str = "+") -> Iterator[tuple[str, dict[str, str]]]:
    for entry_id, raw in StreamPages(client, dlq, page_size=PAGE, last=upto, max_entries=MAX_READ):
        yield to_text(entry_id), {to_text(k): to_text(v) for k, v in raw.items()}


def letter_of(entry_id: str, fields: dict[str, str]) -> Letter:
    payload = payload_fields(fields.get(F.PAYLOAD, ""))
    dead_at = fields.get("dead_at_ms", "")
    return Letter(entry_id, fields.get("reason", "?"), fields.get("error_type", "?"), fields.get("attempts", ""),
                  fields.get(F.ORIGINAL_ID, ""), fields.get("consumer", ""), str(payload.get("account") or ""),
                  str(payload.get("mailbox") or ""), str(payload.get("uid") or ""), str(payload.get("message_id") or ""),
                  int(dead_at) if dead_at.isdigit() else int(entry_id.split("-")[0]))


def letters(client: redis.Redis, dlq: str) -> list[Letter]:
    return [letter_of(entry_id, fields) for entry_id, fields in _pages(client, dlq)]


def by_reason(found: list[Letter]) -> list[ReasonGroup]:
    groups: dict[str, ReasonGroup] = {}
    for item in found:
        ms = int(item.id.split("-")[0])
        old = groups.get(item.reason)
        groups[item.reason] = (ReasonGroup(item.reason, 1, ms, ms) if old is None else
                               ReasonGroup(item.reason, old.count + 1, min(old.oldest_ms, ms), max(old.newest_ms, ms)))
    return sorted(groups.values(), key=lambda g: (-g.count, g.reason))


def one(client: redis.Redis, dlq: str, entry_id: str) -> tuple[Letter, dict[str, str]] | None:
    """A letter's metadata and all its fields (payload, error, traceback: admins only)."""
    if not is_entry_id(entry_id):
        return None
    found: Any = client.xrange(dlq, entry_id, entry_id)
    if not found:
        return None
    fields = {to_text(k): to_text(v) for k, v in found[0][1].items()}
    return letter_of(entry_id, fields), fields


def newest_id(client: redis.Redis, dlq: str) -> str:
    last: Any = client.xrevrange(dlq, count=1)
    return to_text(last[0][0]) if last else "0-0"


def plan(client: redis.Redis, dlq: str, *, action: Action, scope: Scope, value: str, upto: str | None) -> Plan:
    """The letters `action` would touch: ids in `scope` up to `upto` (the newest now when None)."""
    bound = upto if upto and is_entry_id(upto) else newest_id(client, dlq)
    chosen = Plan(action, scope, value, bound)
    if scope == "one":
        chosen.ids = [value] if is_entry_id(value) and one(client, dlq, value) else []
        return chosen
    for entry_id, fields in _pages(client, dlq, upto=bound):
        if scope == "all" or fields.get("reason", "?") == value:
            chosen.ids.append(entry_id)
    return chosen


def execute(admin: DlqAdmin, chosen: Plan) -> int:
    """Carry out a plan; the number of letters it replayed or deleted."""
    if not chosen.ids:
        return 0
    if chosen.action == "replay":
        return len(admin.replay(chosen.ids))
    return admin.purge(ids=chosen.ids)
