"""`email-ingest consumers [list]` and `email-ingest consumers prune --idle-over DURATION`.

Workers named `hostname-pid` (the default) leave a consumer behind in the group at every
restart. Prune deletes those that are dead (no heartbeat), have nothing pending and have
been idle longer than DURATION. Each deletion is one Lua script that re-checks all three
conditions on the server, so a consumer that came back to life or received entries between
the listing and the deletion is left alone: XGROUP DELCONSUMER would otherwise drop its
pending entries, and nothing would ever redeliver them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from email_ingestion.admin.common import (
    EXIT_DEGRADED,
    EXIT_HEALTHY,
    EXIT_SETTINGS,
    Target,
    closed_pipe_is_quiet,
    load,
    parse_duration_ms,
    parser,
    target,
)
from email_ingestion.common.text import human_duration, to_text
from email_ingestion.monitoring.heartbeats import live_workers

# KEYS: stream, heartbeat key; ARGV: group, consumer, minimum idle ms.
# Returns 1 deleted, 0 gone already, -1 alive, -2 has pending entries, -3 not idle long enough.
_PRUNE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -2 end
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == ARGV[2] then
    if tonumber(fields['idle']) < tonumber(ARGV[3]) then return -3 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""
_OUTCOMES = {1: "deleted", 0: "already gone", -1: "alive (heartbeat)", -2: "has pending entries",
             -3: "not idle long enough"}


def listing(where: Target) -> list[dict[str, Any]]:
    alive = live_workers(where.client, where.keys)
    rows = []
    for info in where.client.xinfo_consumers(where.stream, where.group):
        name = to_text(info["name"])
        rows.append({"name": name, "pending": int(info["pending"]), "idle_ms": int(info["idle"]), "alive": name in alive})
    return rows


def prune(where: Target, idle_over_ms: int, dry_run: bool = False) -> list[dict[str, Any]]:
    """Delete every dead, idle, empty consumer; one row per candidate with what happened."""
    script = where.client.register_script(_PRUNE)
    results = []
    for row in listing(where):
        if row["alive"] or row["pending"] or row["idle_ms"] < idle_over_ms:
            continue
        if dry_run:
            outcome = "would delete"
        else:
            code = int(script(keys=[where.stream, where.keys.heartbeat(row["name"])],
                              args=[where.group, row["name"], idle_over_ms]))
            outcome = _OUTCOMES[code]
        results.append({"name": row["name"], "idle_ms": row["idle_ms"], "outcome": outcome})
    return results


def _parser() -> argparse.ArgumentParser:
    p = parser("email-ingest consumers", "List the group's consumers, or prune dead ones.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="action")
    sub.add_parser("list", help="every consumer: pending, idle, alive (the default)")
    pruning = sub.add_parser("prune", help="delete dead consumers with nothing pending")
    pruning.add_argument("--idle-over", type=parse_duration_ms, required=True, metavar="DURATION",
                         help="only consumers idle longer than this (e.g. 1h, 7d)")
    pruning.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load(args, "consumers")
    if settings is None:
        return EXIT_SETTINGS
    where = target(settings)
    try:
        if args.action == "prune":
            rows = prune(where, args.idle_over, args.dry_run)
        else:
            rows = listing(where)
    except redis.RedisError as exc:
        if str(exc).startswith("NOGROUP"):
            print(f"consumers: no consumer group {where.group} on {where.stream} yet: no worker has started",
                  file=sys.stderr)
        else:
            print(f"consumers: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_DEGRADED
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("  ".join(f"idle={human_duration(v / 1000)}" if k == "idle_ms" else f"{k}={v}" for k, v in row.items()))
        if not rows:
            print("(none)" if args.action != "prune" else "nothing to prune")
    return EXIT_HEALTHY


if __name__ == "__main__":
    sys.exit(main())
