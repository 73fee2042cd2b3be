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
RATE_MAX_COUNT = 10_000  # above this the rate is shown as "at least"
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
    """Entries appended over the last minute (stream ids carry their append time)."""
    recent: Any = client.xrange(stream, min=str(max(0, now_ms - RATE_WINDOW_MS)), count=RATE_MAX_COUNT)
    count = len(recent)
    return {"appended_last_minute": count, "at_least": count >= RATE_MAX_COUNT,
            "per_s": round(count / (RATE_WINDOW_MS / 1000), 2)}


def dlq_growth(client: redis.Redis, dlq: str, now_ms: int) -> dict[str, Any]:
    """Age of the newest dead letter and how many arrived within the growing window."""
    newest: Any = client.xrevrange(dlq, count=1)
    if not newest:
        return {"newest_age_s": None, "last_hour": 0, "growing": False}
    newest_ms = int(to_text(newest[0][0]).split("-", 1)[0])
    recent: Any = client.xrange(dlq, min=str(max(0, now_ms - DLQ_GROWING_WINDOW_MS)), count=RATE_MAX_COUNT)
    return {"newest_age_s": round(max(0, now_ms - newest_ms) / 1000, 1), "last_hour": len(recent),
            "growing": bool(recent)}
