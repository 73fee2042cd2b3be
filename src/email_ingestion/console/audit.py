"""The console's audit trail: one Redis stream entry per state-changing action.

Who (the user and role), when (the entry id is Redis's clock), what (action and scope) and
how many letters it touched. Capped (MAXLEN ~) so it cannot grow without bound; the cap is
far above what operators do by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from email_ingestion.common.keys import console_audit
from email_ingestion.common.text import iso_from_epoch_s, to_text

MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class AuditRecord:
    entry_id: str
    at: str
    user: str
    role: str
    action: str
    scope: str
    count: int
    address: str


def record(client: redis.Redis, *, user: str, role: str, action: str, scope: str, count: int, address: str) -> str:
    fields: dict[Any, Any] = {"user": user, "role": role, "action": action, "scope": scope, "count": count,
                              "address": address}
    return to_text(client.xadd(console_audit(), fields, maxlen=MAX_ENTRIES, approximate=True))


def recent(client: redis.Redis, limit: int = 200) -> list[AuditRecord]:
    """The newest entries first."""
    rows: Any = client.xrevrange(console_audit(), count=limit)
    found = []
    for entry_id, raw in rows:
        fields = {to_text(k): to_text(v) for k, v in raw.items()}
        ident = to_text(entry_id)
        found.append(AuditRecord(ident, iso_from_epoch_s(int(ident.split("-")[0]) / 1000), fields.get("user", "?"),
                                 fields.get("role", "?"), fields.get("action", "?"), fields.get("scope", ""),
                                 int(fields.get("count") or 0), fields.get("address", "")))
    return found
