"""`email-ingest status [--json]`: how things are, in one answer.

Exit status: 0 healthy, 1 degraded (each reason on its own line, also when Redis cannot be
reached), 2 bad configuration. It reads the same settings as the services (environment,
`.env` searched the same way, `--env-file`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import redis

from email_ingestion.admin.common import EXIT_DEGRADED, EXIT_HEALTHY, EXIT_SETTINGS, closed_pipe_is_quiet, load, parser, target
from email_ingestion.admin.snapshot import snapshot
from email_ingestion.common.redis_client import describe
from email_ingestion.common.settings import Settings

OVERDUE_S = 60  # a due retry not moved back within a minute means no worker is doing it


def problems(snap: dict[str, Any], settings: Settings) -> list[str]:
    """Why the installation is degraded; empty when healthy."""
    found: list[str] = []
    checks: list[Callable[[dict[str, Any], Settings], str | None]] = [
        _no_group, _no_workers, _orphans, _backpressure, _overdue_retries, _dead_letters]
    for check in checks:
        reason = check(snap, settings)
        if reason:
            found.append(reason)
    return found


def _no_group(snap: dict[str, Any], settings: Settings) -> str | None:
    if snap["group"] in snap["stream"]["groups"]:
        return None
    return f"consumer group {snap['group']} does not exist on {snap['stream']['name']}: no worker has started yet"


def _no_workers(snap: dict[str, Any], settings: Settings) -> str | None:
    return None if snap["workers"]["live"] else "no live worker (no heartbeat key): nothing is being processed"


def _orphans(snap: dict[str, Any], settings: Settings) -> str | None:
    limit_s = (settings.retry.claim_min_idle_ms + 2 * settings.retry.heartbeat_ttl_ms) / 1000
    stuck = [c for c in snap["workers"]["dead_with_pending"] if c["idle_s"] > limit_s]
    if not stuck:
        return None
    names = ", ".join(f"{c['name']} ({c['pending']})" for c in stuck)
    return f"entries held by dead consumers past the claim time ({limit_s:g}s), not reclaimed: {names}"


def _backpressure(snap: dict[str, Any], settings: Settings) -> str | None:
    if snap["unacknowledged"] < snap["max_unacknowledged"]:
        return None
    return (f"backpressure: {snap['unacknowledged']} unacknowledged entries >= REDIS_MAX_STREAM_LENGTH "
            f"{snap['max_unacknowledged']}; producers are paused")


def _overdue_retries(snap: dict[str, Any], settings: Settings) -> str | None:
    due_in = snap["retries"]["next_due_in_s"]
    if due_in is None or due_in >= -OVERDUE_S:
        return None
    return f"retries overdue by {-due_in:g}s: no worker is moving them back to the stream"


def _dead_letters(snap: dict[str, Any], settings: Settings) -> str | None:
    size = snap["dlq"]["size"]
    if not size:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(snap["dlq"]["by_reason"].items()))
    return f"{size} dead letters ({reasons}): see docs/runbooks/dlq-management.md"


def render(snap: dict[str, Any], found: list[str]) -> str:
    """The text a person reads; --json prints `snap` itself."""
    lines = [f"status: {'DEGRADED' if found else 'healthy'}  (Redis time {snap['redis_time']})"]
    lines += [f"  problem: {reason}" for reason in found]
    lines += _render_mailboxes(snap) + _render_stream(snap) + _render_workers(snap)
    retries, dlq = snap["retries"], snap["dlq"]
    lines.append(f"retries: {retries['scheduled']} scheduled" +
                 (f", next due {retries['next_due']} (in {retries['next_due_in_s']:g}s)" if retries["next_due"] else ""))
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(dlq["by_reason"].items()))
    lines.append(f"dlq {dlq['name']}: {dlq['size']}" + (f" ({reasons})" if reasons else ""))
    return "\n".join(lines)


def _render_mailboxes(snap: dict[str, Any]) -> list[str]:
    if not snap["mailboxes"]:
        return ["mailboxes: none has synced into this stream yet"]
    lines = ["mailboxes:"]
    for box in snap["mailboxes"]:
        lines.append(f"  {box['account']} {box['mailbox']}: uidvalidity={box['uidvalidity']} "
                     f"last_uid={box['last_uid']} last_sync={box['last_sync']} "
                     f"({box['last_sync_age_s']}s ago) backpressure={'yes' if box['backpressure'] else 'no'}"
                     + _progress_text(box.get("sync_progress")))
    return lines


def _progress_text(progress: dict[str, Any] | None) -> str:
    if not progress or progress.get("done", 0) >= progress.get("total", 0):
        return ""
    eta = progress.get("eta_s")
    return (f" syncing={progress.get('done')}/{progress.get('total')} rate={progress.get('rate_per_s')}/s"
            f" eta={'?' if eta is None else f'{eta:.0f}s'}")


def _render_stream(snap: dict[str, Any]) -> list[str]:
    stream = snap["stream"]
    lines = [f"stream {stream['name']}: length={stream['length']} unacknowledged={snap['unacknowledged']}"
             f"/{snap['max_unacknowledged']}"]
    for name, group in stream["groups"].items():
        age = group["oldest_unacked_age_s"]
        lines.append(f"  group {name}: lag={group['lag']} pending={group['pending']} "
                     f"oldest_unacked_age={'-' if age is None else f'{age:g}s'}")
        for consumer in group["consumers"]:
            state = "live" if consumer["alive"] else ("DEAD" if consumer["pending"] else "stale")
            lines.append(f"    {consumer['name']}: pending={consumer['pending']} idle={consumer['idle_s']:g}s {state}")
    return lines


def _render_workers(snap: dict[str, Any]) -> list[str]:
    workers = snap["workers"]
    live = ", ".join(w["name"] for w in workers["live"]) or "none"
    lines = [f"workers: {len(workers['live'])} live ({live})"]
    if workers["stale"]:
        lines.append(f"  stale consumers (no heartbeat, nothing pending; `email-ingest consumers prune`): "
                     f"{', '.join(c['name'] for c in workers['stale'])}")
    return lines


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    p = parser("email-ingest status", "Mailboxes, stream, workers, retries and DLQ at a glance.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    settings = load(args, "status")
    if settings is None:
        return EXIT_SETTINGS
    try:
        snap = snapshot(target(settings), settings.redis.max_stream_length)
    except redis.RedisError as exc:
        reason = f"Redis unreachable at {describe(settings.redis)}: {type(exc).__name__}: {exc}"
        print(json.dumps({"healthy": False, "problems": [reason]}) if args.json else f"status: DEGRADED\n  problem: {reason}")
        return EXIT_DEGRADED
    found = problems(snap, settings)
    if args.json:
        print(json.dumps({"healthy": not found, "problems": found, **snap}, indent=2, sort_keys=True))
    else:
        print(render(snap, found))
    return EXIT_DEGRADED if found else EXIT_HEALTHY


if __name__ == "__main__":
    sys.exit(main())
