"""Everything `email-ingest status` reports, read from Redis in one pass.

All ages are measured against Redis's clock (TIME), so a host with a wrong clock reads the
same figures as every other.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

import redis

from email_ingestion.admin import flow
from email_ingestion.admin.common import Target, id_ms, server_ms
from email_ingestion.common.keys import PREFIX, hash_tag
from email_ingestion.common.stream_pages import StreamPages
from email_ingestion.common.text import to_text
from email_ingestion.monitoring.heartbeats import glob_escape, live_workers, unescape

DLQ_PAGE = 100
# Dead letters carry whole messages: the reasons are counted on the newest this many (exact
# counts over all: `email-dlq stats`), so status stays cheap with a huge DLQ and --watch.
DLQ_MAX_READ = 200


def iso_ms(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    when = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mailboxes(client: redis.Redis, stream: str, now_ms: int) -> list[dict[str, Any]]:
    """Every mailbox that feeds `stream` (its UID state hash), with its stored position."""
    base = f"{PREFIX}:{hash_tag(stream)}:"
    names = []
    for key in client.scan_iter(match=glob_escape(base) + "*:*:state", count=1000):
        parts = to_text(key)[len(base):].removesuffix(":state").split(":")
        if len(parts) == 2:  # else a consumer-side key that happens to end in :state
            names.append((key, parts))
    pipe = client.pipeline(transaction=False)  # one round trip for thousands of mailboxes
    for key, _ in names:
        pipe.hgetall(key)
        pipe.get(to_text(key).removesuffix(":state") + ":progress")
    replies = pipe.execute() if names else []
    found = [{**_mailbox(parts, {to_text(k): to_text(v) for k, v in raw.items()}, now_ms), "sync_progress": _progress(progress)}
             for (_, parts), raw, progress in zip(names, replies[::2], replies[1::2], strict=True)]
    return sorted(found, key=lambda m: (m["account"], m["mailbox"]))


def _mailbox(parts: list[str], state: dict[str, str], now_ms: int) -> dict[str, Any]:
    # synced_at_ms (a pass finished) when the producer records it, else the last time it
    # stored a position (a batch appended, or a pass that moved it).
    stamp = state.get("synced_at_ms") or state.get("updated_at_ms")
    updated = int(stamp) if stamp else None
    return {"account": unescape(parts[0]), "mailbox": unescape(parts[1]),
            "uidvalidity": int(state["uidvalidity"]) if state.get("uidvalidity") else None,
            "last_uid": int(state.get("last_uid") or 0), "last_sync": iso_ms(updated),
            "last_sync_age_s": None if updated is None else round((now_ms - updated) / 1000, 1)}


def _progress(text: bytes | str | None) -> dict[str, Any] | None:
    """The producer's last sync step figures (done, total, rate_per_s, eta_s), when it wrote them."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def groups(client: redis.Redis, stream: str) -> dict[str, dict[str, Any]]:
    try:
        return {to_text(g["name"]): g for g in client.xinfo_groups(stream)}
    except redis.ResponseError:  # no stream yet
        return {}


def oldest_unacked_ms(client: redis.Redis, stream: str, group: dict[str, Any]) -> int | None:
    """Time of the oldest entry the group still needs: the oldest pending, else the first undelivered."""
    if int(group.get("pending") or 0) > 0:
        oldest = client.xpending(stream, to_text(group["name"])).get("min")
        if oldest is not None:
            return id_ms(oldest)
    after = client.xrange(stream, min="(" + to_text(group["last-delivered-id"]), count=1)
    return id_ms(after[0][0]) if after else None


def consumers(client: redis.Redis, stream: str, group: str, alive: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for info in client.xinfo_consumers(stream, group):
        name = to_text(info["name"])
        rows.append({"name": name, "pending": int(info["pending"]), "idle_s": round(int(info["idle"]) / 1000, 1),
                     "alive": name in alive})
    return rows


def stream_section(target: Target, now_ms: int, alive: dict[str, int]) -> dict[str, Any]:
    client, stream = target.client, target.stream
    found = groups(client, stream)
    info: dict[str, Any] = {"name": stream, "length": int(client.xlen(stream)), "groups": {}}
    for name, group in found.items():
        oldest = oldest_unacked_ms(client, stream, group)
        info["groups"][name] = {
            "pending": int(group.get("pending") or 0),
            "lag": None if group.get("lag") is None else int(group["lag"]),
            "oldest_unacked_age_s": None if oldest is None else round(max(0, now_ms - oldest) / 1000, 1),
            "consumers": consumers(client, stream, name, alive if name == target.group else {}),
        }
    return info


def unacknowledged(stream: dict[str, Any]) -> int:
    """Entries the slowest group has not acknowledged: what the producer's backpressure counts."""
    if not stream["groups"]:
        return int(stream["length"])
    worst = max(g["pending"] + (stream["length"] if g["lag"] is None else g["lag"]) for g in stream["groups"].values())
    return int(min(worst, stream["length"]))


def retries(target: Target, now_ms: int) -> dict[str, Any]:
    client = target.client
    first = client.zrange(target.keys.retries, 0, 0, withscores=True)
    due_ms = int(first[0][1]) if first else None
    return {"scheduled": int(client.zcard(target.keys.retries)), "next_due": iso_ms(due_ms),
            "next_due_in_s": None if due_ms is None else round((due_ms - now_ms) / 1000, 1)}


def dead_letters(target: Target) -> dict[str, Any]:
    newest = StreamPages(target.client, target.dlq, page_size=DLQ_PAGE, newest_first=True, max_entries=DLQ_MAX_READ)
    reasons = Counter(to_text(fields.get(b"reason", b"?")) for _, fields in newest)
    size = int(target.client.xlen(target.dlq))
    return {"name": target.dlq, "size": size, "by_reason": dict(reasons), "counted": newest.read}


def snapshot(target: Target, max_unacked: int) -> dict[str, Any]:
    """The whole picture, as plain data (also the --json output)."""
    now_ms = server_ms(target.client)
    alive = live_workers(target.client, target.keys)
    stream = stream_section(target, now_ms, alive)
    backlog = unacknowledged(stream)
    boxes = mailboxes(target.client, target.stream, now_ms)
    for box in boxes:  # the producer pauses per stream: every mailbox feeding it is held back
        box["backpressure"] = backlog >= max_unacked
    live_producers = flow.producers(target.client, now_ms)
    flow.add_owners(target.client, target.stream, boxes, {p["id"] for p in live_producers})
    stream["rate"] = flow.entries_per_s(target.client, target.stream, now_ms)
    group = stream["groups"].get(target.group, {"consumers": []})
    known = {c["name"] for c in group["consumers"]}
    dlq = {**dead_letters(target), **flow.dlq_growth(target.client, target.dlq, now_ms)}
    return {"redis_time": iso_ms(now_ms), "group": target.group, "mailboxes": boxes, "stream": stream,
            "producers": live_producers,
            "unacknowledged": backlog, "max_unacknowledged": max_unacked,
            "workers": {"live": [{"name": n, "heartbeat_ttl_ms": ttl} for n, ttl in sorted(alive.items())],
                        "dead_with_pending": [c for c in group["consumers"] if not c["alive"] and c["pending"]],
                        "stale": [c for c in group["consumers"] if not c["alive"] and not c["pending"]],
                        "live_not_in_group_yet": sorted(set(alive) - known)},
            "retries": retries(target, now_ms), "dlq": dlq}


def snapshots(targets: list[Target], max_unacked: int) -> dict[str, dict[str, Any]]:
    """snapshot() of each stream the workers read (admin/common.py targets()), by stream name."""
    return {target.stream: snapshot(target, max_unacked) for target in targets}
