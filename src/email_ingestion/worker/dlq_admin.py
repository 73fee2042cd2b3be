"""Dead-letter queue administration, for operators (instead of redis-cli scripts).

    python -m email_ingestion.worker.dlq_admin list [--limit N] [--json]
    python -m email_ingestion.worker.dlq_admin show ID [--json]
    python -m email_ingestion.worker.dlq_admin replay (ID... | --all | --error-type TYPE) [--json]
    python -m email_ingestion.worker.dlq_admin purge (ID... | --all | --older-than DURATION) [--json]
    python -m email_ingestion.worker.dlq_admin stats [--json]

Replay puts the original payload back on the stream it came from (the letter's `stream`
field; older letters: the stream whose DLQ holds them) with its attempts reset and removes it
from the DLQ in one atomic step. DURATION: 90s, 30m, 12h, 7d.

Every command covers the DLQ of each stream the workers read: `--stream` (repeat for
several), else WORKER_STREAMS, else REDIS_STREAM_NAME.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from typing import Any

import redis

from email_ingestion.admin.common import closed_pipe_is_quiet
from email_ingestion.common import entry_fields as F
from email_ingestion.common.cli_args import add_version
from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.errors import AuthError, RedisUnavailableError, SettingsError
from email_ingestion.common.keys import dlq_stream, hash_tag
from email_ingestion.common.redis_client import make_redis, redis_errors
from email_ingestion.common.settings import load_settings
from email_ingestion.common.text import iso_from_epoch_s, to_text

# KEYS: dlq, stream; ARGV: dlq entry id, then the field names payload, attempt, replayed_from,
# stream. A letter that names another stream than KEYS[2] is not moved (it was read, and the
# stream chosen, before this call).
_REPLAY = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then return false end
local fields = entries[1][2]
local payload = nil
for i = 1, #fields, 2 do
  if fields[i] == ARGV[2] then payload = fields[i + 1] end
  if fields[i] == ARGV[5] and fields[i + 1] ~= KEYS[2] then return false end
end
if not payload then return false end
local id = redis.call('XADD', KEYS[2], '*', ARGV[2], payload, ARGV[3], 0, ARGV[4], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 12h or 7d")
    return int(match.group(1)) * _UNITS_S[match.group(2)]


class DlqAdmin:
    def __init__(self, client: redis.Redis, stream: str, dlq: str, clock_ms: Clock = wall_ms) -> None:
        self.redis = client
        self.stream = stream
        self.dlq = dlq
        self.clock_ms = clock_ms
        self._replay = client.register_script(_REPLAY)

    def entries(self, limit: int | None = None, ids: list[str] | None = None) -> list[dict[str, Any]]:
        raw: Any
        if ids:
            found: list[Any] = [self.redis.xrange(self.dlq, entry_id, entry_id) for entry_id in ids]
            raw = [entry for entries in found for entry in entries]
        else:
            raw = self.redis.xrange(self.dlq, count=limit)
        return [_entry(entry_id, fields) for entry_id, fields in raw]

    def replay(self, ids: list[str]) -> list[dict[str, str]]:
        """Each letter back to the stream it records (this DLQ's stream when it records none)."""
        done = []
        for letter in self.entries(ids=ids):
            stream = letter.get(F.SOURCE_STREAM) or self.stream
            if hash_tag(stream) != hash_tag(self.stream):
                continue  # not written by this project's workers: its stream is not on this slot
            new_id = self._replay(keys=[self.dlq, stream],
                                  args=[letter["id"], F.PAYLOAD, F.ATTEMPT, F.REPLAYED_FROM, F.SOURCE_STREAM])
            if new_id:
                done.append({"dlq_id": letter["id"], "stream": stream, "stream_id": to_text(new_id)})
        return done

    def select(self, all_: bool, error_type: str | None, ids: list[str]) -> list[str]:
        if ids:
            return ids
        chosen = [e for e in self.entries() if all_ or e.get("error_type") == error_type]
        return [e["id"] for e in chosen]

    def purge(self, ids: list[str] | None = None, all_: bool = False, older_than_s: int | None = None) -> int:
        if older_than_s is not None:
            cutoff_ms = self.clock_ms() - older_than_s * 1000
            return int(self.redis.xtrim(self.dlq, minid=f"{cutoff_ms}-0", approximate=False))
        if all_:
            count = int(self.redis.xlen(self.dlq))
            self.redis.delete(self.dlq)
            return count
        return int(self.redis.xdel(self.dlq, *ids)) if ids else 0

    def stats(self) -> dict[str, Any]:
        entries = self.entries()
        now_ms = self.clock_ms()
        ages = [now_ms - int(e["id"].split("-")[0]) for e in entries]
        return {
            "dlq": self.dlq, "depth": len(entries),
            "by_reason": dict(Counter(e.get("reason", "?") for e in entries)),
            "by_error_type": dict(Counter(e.get("error_type", "?") for e in entries)),
            "oldest_age_s": round(max(ages) / 1000, 1) if ages else None,
            "newest_age_s": round(min(ages) / 1000, 1) if ages else None,
        }


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {"id": to_text(entry_id), **{to_text(k): to_text(v) for k, v in fields.items()}}


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (`dlq --json stats`, `dlq stats --json`);
    after it they default to SUPPRESS, so they never undo the same option given before."""
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--json", action="store_true", help="machine-readable output",
                        **({"default": False} if defaults else unset))
    parser.add_argument("--stream", action="append", help="a stream whose DLQ to use; repeat for several "
                        "(default WORKER_STREAMS, else REDIS_STREAM_NAME)", **unset)
    parser.add_argument("--redis-url", help="REDIS_URL", **unset)
    parser.add_argument("--env-file", help="settings file (default: .env, searched)",
                        **({"default": ".env"} if defaults else unset))
    return parser


def _parser() -> argparse.ArgumentParser:
    p = _common_options(argparse.ArgumentParser(prog="email-dlq", description="Inspect and act on the dead-letter queue."),
                        defaults=True)
    add_version(p)
    common = [_common_options(argparse.ArgumentParser(add_help=False), defaults=False)]
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list dead letters (oldest first)", parents=common)
    listing.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", help="one dead letter in full", parents=common)
    show.add_argument("id")
    replay = sub.add_parser("replay", help="put payloads back on their stream (attempts reset)", parents=common)
    replay.add_argument("ids", nargs="*")
    replay.add_argument("--all", action="store_true")
    replay.add_argument("--error-type")
    purge = sub.add_parser("purge", help="delete dead letters", parents=common)
    purge.add_argument("ids", nargs="*")
    purge.add_argument("--all", action="store_true")
    purge.add_argument("--older-than", type=parse_duration_s, metavar="DURATION")
    sub.add_parser("stats", help="counts by reason and error type, ages", parents=common)
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_selection(parser, args)
    streams = args.stream
    try:
        settings = load_settings({"redis": {"url": args.redis_url, "stream_name": streams[0] if streams else None},
                                  "worker": {"streams": ",".join(streams) if streams else None}},
                                 env_file=args.env_file)
        client = make_redis(settings.redis)
    except SettingsError as exc:
        print(f"dlq: {exc}", file=sys.stderr)
        return 2
    admins = [DlqAdmin(client, stream, dlq_stream(stream, settings.retry.dlq_stream_name))
              for stream in settings.worker_streams()]
    try:
        with redis_errors(f"dlq {args.command}"):
            result = _run(admins, args)
    except RedisUnavailableError as exc:
        print(f"dlq: {exc}", file=sys.stderr)
        return 1
    except AuthError as exc:  # an untrusted Redis TLS certificate: a person must act
        print(f"dlq: {exc}", file=sys.stderr)
        return 3
    if result is None:
        print(f"dlq: no dead letter {args.id} in {', '.join(a.dlq for a in admins)}", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0


def _check_selection(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command == "replay" and not (args.ids or args.all or args.error_type):
        parser.error("replay needs IDs, --all or --error-type")
    if args.command == "purge" and not (args.ids or args.all or args.older_than is not None):
        parser.error("purge needs IDs, --all or --older-than")


def _run(admins: list[DlqAdmin], args: argparse.Namespace) -> Any:
    """The command over the DLQ of every stream; one stream answers as it always has."""
    if args.command == "list":
        rows = [{F.SOURCE_STREAM: admin.stream, **e} for admin in admins for e in admin.entries(args.limit)]
        return [_with_times({k: v for k, v in e.items() if k not in (F.PAYLOAD, "traceback")})
                for e in rows[:args.limit]]
    if args.command == "show":
        found = [e for admin in admins for e in admin.entries(ids=[args.id])]
        return _with_times(found[0]) if found else None
    if args.command == "replay":
        return {"replayed": [done for admin in admins
                             for done in admin.replay(admin.select(args.all, args.error_type, args.ids))]}
    if args.command == "purge":
        return {"purged": sum(admin.purge(args.ids, args.all, args.older_than) for admin in admins)}
    stats = [{"stream": admin.stream, **admin.stats()} for admin in admins]
    return stats[0] if len(stats) == 1 else stats


def _with_times(entry: dict[str, Any]) -> dict[str, Any]:
    """Each `*_ms` instant also as ISO 8601 UTC (`first_failure_ms` -> `first_failure`)."""
    timed = dict(entry)
    for key, value in entry.items():
        if key.endswith("_ms") and str(value).isdigit():
            timed[key.removesuffix("_ms")] = iso_from_epoch_s(int(value) / 1000)
    return timed


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    rows = result if isinstance(result, list) else [result]
    for row in rows:  # people read the ISO times; the *_ms twins stay in --json
        print("  ".join(f"{k}={v}" for k, v in row.items() if not (k.endswith("_ms") and k[:-3] in row)))
    if not rows:
        print("(empty)")


if __name__ == "__main__":
    sys.exit(main())
