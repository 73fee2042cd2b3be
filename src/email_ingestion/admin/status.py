"""`email-ingest status [--json]`: how things are, in one answer.

Exit status: 0 healthy, 1 degraded (each reason on its own line, also when Redis cannot be
reached), 2 bad configuration. It reads the same settings as the services (environment,
`.env` searched the same way, `--env-file`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from email_ingestion.admin.common import (
    EXIT_DEGRADED,
    EXIT_HEALTHY,
    EXIT_SETTINGS,
    closed_pipe_is_quiet,
    load,
    parser,
    targets,
)
from email_ingestion.admin.snapshot import snapshots
from email_ingestion.common.redis_client import describe
from email_ingestion.common.settings import Settings
from email_ingestion.common.text import human_duration, printable

OVERDUE_S = 60  # a due retry not moved back within a minute means no worker is doing it
# With thousands of mailboxes the text stays a screen: this many named in a problem, this many
# lines of mailboxes (those nobody follows first); --json has every one.
NAMED, MAILBOX_LINES = 10, 50


def problems(snap: dict[str, Any], settings: Settings) -> list[str]:
    """Why the installation is degraded; empty when healthy."""
    found: list[str] = []
    checks: list[Callable[[dict[str, Any], Settings], str | None]] = [
        _no_producer, _unowned_mailboxes, _no_group, _no_workers, _orphans, _backpressure, _overdue_retries,
        _dead_letters_growing]
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


def _no_producer(snap: dict[str, Any], settings: Settings) -> str | None:
    if snap["producers"] or not snap["mailboxes"]:
        return None
    return "no live producer: no mailbox is being followed (is email-producer running?)"


def _unowned_mailboxes(snap: dict[str, Any], settings: Settings) -> str | None:
    if not snap["producers"]:
        return None  # said once, by _no_producer
    orphans = [printable(f"{b['account']} {b['mailbox']}") for b in snap["mailboxes"] if not b.get("owner_alive")]
    if not orphans:
        return None
    more = f" and {len(orphans) - NAMED} more ({len(orphans)} in all)" if len(orphans) > NAMED else ""
    return f"mailboxes no live producer owns (not followed): {', '.join(orphans[:NAMED])}{more}"


def _dead_letters_growing(snap: dict[str, Any], settings: Settings) -> str | None:
    dlq = snap["dlq"]
    if not dlq["growing"]:
        return None
    last_hour = f"{dlq['last_hour']}{'+' if dlq.get('last_hour_at_least') else ''}"
    return (f"dead letters growing: {last_hour} in the last hour, {dlq['size']} in all "
            f"({_reasons(dlq)}): see docs/runbooks/dlq-management.md")


def notes(snap: dict[str, Any]) -> list[str]:
    """What deserves a look without making the installation degraded."""
    dlq = snap["dlq"]
    if dlq["size"] and not dlq["growing"]:
        return [f"{dlq['size']} old dead letters, none in the last hour (newest {human_duration(dlq['newest_age_s'])} "
                f"ago; {_reasons(dlq)}): see docs/runbooks/dlq-management.md"]
    return []


def _reasons(dlq: dict[str, Any]) -> str:
    text = ", ".join(f"{printable(k)} {v}" for k, v in sorted(dlq["by_reason"].items()))
    if dlq.get("counted", dlq["size"]) < dlq["size"]:
        return f"newest {dlq['counted']}: {text}; `email-dlq stats` counts all"
    return text


def render(snap: dict[str, Any], found: list[str]) -> str:
    """The text a person reads; --json prints `snap` itself."""
    lines = [f"status: {'DEGRADED' if found else 'healthy'}  (Redis time {snap['redis_time']})"]
    lines += [f"  problem: {reason}" for reason in found]
    lines += [f"  note: {note}" for note in notes(snap)]
    lines += _render_producers(snap) + _render_mailboxes(snap)
    for stream in snap.get("streams", [snap]):
        lines += _render_stream(stream) + _render_workers(stream) + _render_retries_and_dlq(stream)
    return "\n".join(lines)


def _render_producers(snap: dict[str, Any]) -> list[str]:
    if not snap["producers"]:
        return ["producers: none alive"]
    return [f"producers: {len(snap['producers'])} alive ({', '.join(p['id'] for p in snap['producers'])})"]


def _render_mailboxes(snap: dict[str, Any]) -> list[str]:
    boxes = [box for stream in snap.get("streams", [snap]) for box in stream["mailboxes"]]
    if not boxes:
        return ["mailboxes: none has synced into this stream yet"]
    lines = ["mailboxes:"]
    shown = sorted(boxes, key=lambda b: bool(b.get("owner_alive")))[:MAILBOX_LINES]  # stable: unfollowed first
    for box in shown:
        owner = box.get("owner")
        owned = f"owner={owner}" + ("" if box.get("owner_alive") else " (NOT ALIVE)") if owner else "owner=NONE"
        progress = box.get("progress") or _progress_text(box.get("sync_progress"))
        lines.append(f"  {printable(box['account'])} {printable(box['mailbox'])}: {printable(owned)} "
                     f"last_uid={box['last_uid']} "
                     f"last_sync={box['last_sync']} ({human_duration(box['last_sync_age_s'])} ago)"
                     + (f" first sync {progress}" if progress else "")
                     + (" BACKPRESSURE" if box["backpressure"] else ""))
    if len(boxes) > len(shown):
        followed = sum(1 for b in boxes if b.get("owner_alive"))
        lines.append(f"  ... {len(boxes) - len(shown)} more ({len(boxes)} mailboxes, {followed} followed; --json lists all)")
    return lines


def _progress_text(progress: dict[str, Any] | None) -> str:
    if not progress or progress.get("done", 0) >= progress.get("total", 0):
        return ""
    eta = progress.get("eta_s")
    return (f"syncing={progress.get('done')}/{progress.get('total')} rate={progress.get('rate_per_s')}/s"
            f" eta={'?' if eta is None else f'{eta:.0f}s'}")


def _render_stream(snap: dict[str, Any]) -> list[str]:
    stream = snap["stream"]
    rate = stream.get("rate") or {}
    per_s = f"{'~' if rate.get('estimated') else ''}{rate.get('per_s', 0):g}/s over the last minute"
    lines = [f"stream {stream['name']}: length={stream['length']} unacknowledged={snap['unacknowledged']}"
             f"/{snap['max_unacknowledged']} appended {per_s}"]
    for name, group in stream["groups"].items():
        lines.append(f"  group {name}: lag={group['lag']} pending={group['pending']} "
                     f"oldest_unacked_age={human_duration(group['oldest_unacked_age_s'])}")
        for consumer in group["consumers"]:
            state = "live" if consumer["alive"] else ("DEAD" if consumer["pending"] else "stale")
            lines.append(f"    {consumer['name']}: pending={consumer['pending']} "
                         f"idle={human_duration(consumer['idle_s'])} {state}")
    return lines


def _render_workers(snap: dict[str, Any]) -> list[str]:
    workers = snap["workers"]
    live = ", ".join(w["name"] for w in workers["live"]) or "none"
    lines = [f"workers: {len(workers['live'])} live ({live})"]
    if workers["stale"]:
        lines.append(f"  stale consumers (no heartbeat, nothing pending; `email-ingest consumers prune`): "
                     f"{', '.join(c['name'] for c in workers['stale'])}")
    return lines


def _render_retries_and_dlq(snap: dict[str, Any]) -> list[str]:
    retries, dlq = snap["retries"], snap["dlq"]
    due = (f", next due {retries['next_due']} (in {human_duration(max(0.0, retries['next_due_in_s']))})"
           if retries["next_due"] else "")
    reasons = _reasons(dlq)
    age = f", newest {human_duration(dlq['newest_age_s'])} ago" if dlq.get("newest_age_s") is not None else ""
    return [f"retries: {retries['scheduled']} scheduled{due}",
            f"dlq {dlq['name']}: {dlq['size']}" + (f" ({reasons}{age})" if reasons else "")]


def collect(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """One snapshot per stream the workers read; the first at the top level (as before),
    every one under "streams"; problems of all of them."""
    snaps = list(snapshots(targets(settings), settings.redis.max_stream_length).values())
    first = dict(snaps[0])
    if len(snaps) > 1:
        first["streams"] = snaps
    found = [reason for snap in snaps for reason in problems(snap, settings)]
    return first, list(dict.fromkeys(found))


def watch(settings: Settings, interval_s: float) -> int:
    """Redraw every `interval_s` until interrupted; the exit status is the last answer's."""
    code = EXIT_DEGRADED  # interrupted before the first answer: nothing was shown healthy
    try:
        while True:
            code, text = _once_text(settings)
            sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n")
            print(text, flush=True)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return code


def _once_text(settings: Settings) -> tuple[int, str]:
    try:
        snap, found = collect(settings)
    except redis.RedisError as exc:
        return EXIT_DEGRADED, f"status: DEGRADED\n  problem: {_unreachable(settings, exc)}"
    return (EXIT_DEGRADED if found else EXIT_HEALTHY), render(snap, found)


def _unreachable(settings: Settings, exc: BaseException) -> str:
    return f"Redis unreachable at {describe(settings.redis)}: {type(exc).__name__}: {exc}"


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    p = parser("email-ingest status", "Is mail flowing? Producers, mailboxes, streams, workers, retries and DLQ.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    args = p.parse_args(argv)
    if args.watch is not None and (args.watch <= 0 or args.json):
        p.error("--watch takes a positive number of seconds and is for people (not with --json)")
    settings = load(args, "status")
    if settings is None:
        return EXIT_SETTINGS
    if args.watch:
        return watch(settings, args.watch)
    if not args.json:
        code, text = _once_text(settings)
        print(text)
        return code
    try:
        snap, found = collect(settings)
    except redis.RedisError as exc:
        print(json.dumps({"healthy": False, "problems": [_unreachable(settings, exc)]}))
        return EXIT_DEGRADED
    print(json.dumps({"healthy": not found, "problems": found, "notes": notes(snap), **snap}, indent=2, sort_keys=True))
    return EXIT_DEGRADED if found else EXIT_HEALTHY


if __name__ == "__main__":
    sys.exit(main())
