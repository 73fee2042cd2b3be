"""The overview page's data: `email-ingest status`'s snapshot (mailboxes with their owners,
live producers, the stream, workers), plus each mailbox's state as its producer reports it,
the other worker streams, and the last hour's flow (worker/flow.py) as per-minute series."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis

from email_ingestion.admin import flow as producer_flow
from email_ingestion.admin.common import Target, server_ms
from email_ingestion.admin.snapshot import iso_ms, mailboxes, snapshot, stream_section
from email_ingestion.common.keys import MailboxKeys, StreamKeys
from email_ingestion.common.text import to_text
from email_ingestion.console.formatting import duration
from email_ingestion.monitoring.heartbeats import live_workers
from email_ingestion.worker.flow import BUCKETS_MS, MINUTE_MS

MINUTES = 60
MAX_MAILBOX_ROWS = 500  # the page lists the most troubled first and counts the rest
# Worst first: what needs a person, then what waits on a server, then the rest.
_STATE_ORDER = {"credentials": 0, "unowned": 1, "quota": 2, "backing off": 3, "syncing": 4, "idle": 5}


@dataclass(frozen=True)
class FlowSeries:
    """One value per minute, oldest first, for the last hour."""

    minutes_ms: list[int]
    handled: list[int]
    mean_latency_ms: list[int | None]
    handled_total: int
    p95_latency_ms: int | None  # upper bound of the bucket holding the 95th percentile


def add_activity(client: redis.Redis, boxes: list[dict[str, Any]]) -> None:
    """Add what each mailbox's producer reports doing (producer/activity.py) as its state;
    the owner (its lease) is already there, from the snapshot."""
    pipe = client.pipeline(transaction=False)
    for box in boxes:
        pipe.hgetall(MailboxKeys(box["stream"], box["account"], box["mailbox"]).activity)
    for box, raw in zip(boxes, pipe.execute(), strict=True):
        activity = {to_text(k): to_text(v) for k, v in raw.items()}
        box.update(_state(bool(box.get("owner")), activity, box.get("sync_progress")))


def _state(owned: bool, activity: dict[str, str], progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """State, its detail and sync progress (the producer's progress key, via the snapshot).
    Unowned wins: a state left by a producer that has gone is history, not what happens now."""
    if not owned:
        return {"state": "unowned", "state_detail": None, "first_sync": None}
    state = activity.get("state") or "idle"
    return {"state": state, "state_detail": activity.get("detail") or None,
            "first_sync": _progress_text(progress, running=state == "syncing")}


def _progress_text(progress: dict[str, Any] | None, *, running: bool) -> str | None:
    if not progress or not progress.get("total"):
        return None
    done, total = int(progress.get("done") or 0), int(progress["total"])
    text = f"{done}/{total} ({100 * done // total}%)"
    if running and progress.get("rate_per_s"):
        text += f", {progress['rate_per_s']}/s"
        if progress.get("eta_s") is not None:
            text += f", {duration(float(progress['eta_s']))} left"
    return text


def flow(targets: list[Target], now_ms: int) -> FlowSeries:
    """The last hour's flow, summed over the streams."""
    first = now_ms - now_ms % MINUTE_MS - (MINUTES - 1) * MINUTE_MS
    minutes = [first + i * MINUTE_MS for i in range(MINUTES)]
    pipe = targets[0].client.pipeline(transaction=False)
    for minute in minutes:
        for target in targets:
            pipe.hgetall(target.keys.flow(minute))
    replies, rows = pipe.execute(), []
    for i in range(MINUTES):
        row: Counter[str] = Counter()
        for raw in replies[i * len(targets):(i + 1) * len(targets)]:
            row.update({to_text(k): int(v) for k, v in raw.items()})
        rows.append(dict(row))
    handled = [row.get("handled", 0) for row in rows]
    mean = [row["latency_sum_ms"] // row["timed"] if row.get("timed") else None for row in rows]
    return FlowSeries(minutes, handled, mean, sum(handled), _p95(rows))


def _p95(rows: list[dict[str, int]]) -> int | None:
    timed = sum(row.get("timed", 0) for row in rows)
    if not timed:
        return None
    seen = 0
    for bound in BUCKETS_MS:
        seen += sum(row.get(f"le_{bound}", 0) for row in rows)
        if seen >= 0.95 * timed:
            return bound
    return None  # above the largest bucket: shown as "> 1 h"


def overview(target: Target, max_unacked: int, streams: tuple[str, ...] = ()) -> dict[str, Any]:
    """`target`'s snapshot, with the other `streams` (WORKER_STREAMS) alongside: their mailboxes,
    stream figures and flow. Dead letters, retries and search stay with `target`'s stream."""
    snap = snapshot(target, max_unacked)
    now_ms = server_ms(target.client)
    others = [_other(target, name) for name in dict.fromkeys(streams) if name != target.stream]
    snap["streams"] = [snap["stream"]]
    for box in snap["mailboxes"]:
        box["stream"] = target.stream
    live_ids = {p["id"] for p in snap["producers"]}
    for other in others:
        section = stream_section(other, now_ms, live_workers(other.client, other.keys))
        section["rate"] = producer_flow.entries_per_s(other.client, other.stream, now_ms)
        snap["streams"].append(section)
        boxes = mailboxes(other.client, other.stream, now_ms)
        producer_flow.add_owners(other.client, other.stream, boxes, live_ids)
        snap["mailboxes"] += [{**box, "stream": other.stream} for box in boxes]
    add_activity(target.client, snap["mailboxes"])
    _worst_first(snap)
    snap["flow"] = flow([target, *others], now_ms)
    snap["now"] = iso_ms(now_ms)
    return snap


def _other(target: Target, stream: str) -> Target:
    return Target(target.client, stream, target.group, "", StreamKeys(stream=stream, group=target.group))


def _worst_first(snap: dict[str, Any]) -> None:
    """Count mailboxes by state, and keep the MAX_MAILBOX_ROWS most troubled for the table."""
    boxes = sorted(snap["mailboxes"], key=lambda b: (_STATE_ORDER.get(b["state"], 0), b["account"], b["mailbox"]))
    snap["mailbox_states"] = dict(Counter(b["state"] for b in boxes).most_common())
    snap["mailboxes_hidden"] = max(0, len(boxes) - MAX_MAILBOX_ROWS)
    snap["mailboxes"] = boxes[:MAX_MAILBOX_ROWS]
