""""Is mail flowing?": the parts of `email-ingest status` that look at producers rather
than the queue — which producers are alive, who owns each mailbox, how fast entries arrive,
and whether the DLQ is still growing. All times come from Redis's clock.
"""

from __future__ import annotations

from typing import Any

import redis

from email_ingestion.common.keys import PREFIX, MailboxKeys
from email_ingestion.common.text import to_text
from email_ingestion.monitoring.heartbeats import SCAN_COUNT, glob_escape
from email_ingestion.producer.instances import Instance

RATE_WINDOW_MS = 60_000
# Entries carry whole messages: status (and --watch, every 2 s) reads at most this many of
# them to count. Fewer within the window: an exact count; more: the rate over the newest ones.
RATE_SAMPLE = 100
# A dead letter newer than this means the DLQ is still growing: a problem. An older one
# only needs a look (a note), and no longer keeps status DEGRADED for weeks.
DLQ_GROWING_WINDOW_MS = 3_600_000


def producers(client: redis.Redis, now_ms: int) -> list[dict[str, Any]]:
    """Every live producer of every fleet (registries scored by the registration's expiry)."""
    found = []
    for key in client.scan_iter(match=glob_escape(f"{PREFIX}:producers:") + "*", count=SCAN_COUNT):
        fleet = to_text(key).split(":producers:", 1)[1]
        members: Any = client.zrange(key, 0, -1, withscores=True)
        for member, expires_ms in members:
            if expires_ms > now_ms:
                # Members are processes (producer/instances.py); leases carry their PRODUCER_ID.
                instance = Instance.parse(to_text(member))
                found.append({"id": instance.producer_id if instance else to_text(member), "fleet": fleet,
                              "process": to_text(member),
                              "registration_expires_in_s": round((expires_ms - now_ms) / 1000, 1)})
    return sorted(found, key=lambda p: (p["id"], p["fleet"]))


def add_owners(client: redis.Redis, stream: str, boxes: list[dict[str, Any]], live_ids: set[str]) -> None:
    """Each mailbox's owning producer (its lease), and whether that producer is alive."""
    if not boxes:
        return
    pipe = client.pipeline(transaction=False)
    for box in boxes:
        pipe.get(MailboxKeys(stream=stream, account=box["account"], mailbox=box["mailbox"]).lease)
    for box, lease in zip(boxes, pipe.execute(), strict=True):
        owner = to_text(lease).rsplit(":", 1)[0] if lease else None
        box["owner"] = owner
        box["owner_alive"] = owner is not None and owner in live_ids


def entries_per_s(client: redis.Redis, stream: str, now_ms: int) -> dict[str, Any]:
    """Entries appended over the last minute (stream ids carry their append time): counted
    when at most RATE_SAMPLE, else estimated from the time the newest RATE_SAMPLE took."""
    recent = newest_since(client, stream, now_ms - RATE_WINDOW_MS)
    if len(recent) < RATE_SAMPLE:
        return {"appended_last_minute": len(recent), "at_least": False, "estimated": False,
                "per_s": round(len(recent) / (RATE_WINDOW_MS / 1000), 2)}
    span_ms = max(1, now_ms - recent[-1])
    per_s = round(RATE_SAMPLE / (span_ms / 1000), 2)
    return {"appended_last_minute": round(per_s * RATE_WINDOW_MS / 1000), "at_least": False, "estimated": True,
            "per_s": per_s}


def newest_since(client: redis.Redis, stream: str, since_ms: int, count: int = RATE_SAMPLE) -> list[int]:
    """Append times (ms) of the newest `count` entries at or after `since_ms`, newest first."""
    newest: Any = client.xrevrange(stream, max="+", min=str(max(0, since_ms)), count=count)
    return [int(to_text(entry_id).split("-", 1)[0]) for entry_id, _ in newest]


def dlq_growth(client: redis.Redis, dlq: str, now_ms: int) -> dict[str, Any]:
    """Age of the newest dead letter and how many arrived within the growing window (counted
    up to RATE_SAMPLE: `last_hour_at_least` beyond)."""
    recent = newest_since(client, dlq, now_ms - DLQ_GROWING_WINDOW_MS)
    newest = recent[:1] or newest_since(client, dlq, 0, count=1)
    if not newest:
        return {"newest_age_s": None, "last_hour": 0, "last_hour_at_least": False, "growing": False}
    return {"newest_age_s": round(max(0, now_ms - newest[0]) / 1000, 1), "last_hour": len(recent),
            "last_hour_at_least": len(recent) >= RATE_SAMPLE, "growing": bool(recent)}
