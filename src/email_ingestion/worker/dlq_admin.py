"""Dead-letter queue administration, for operators (instead of redis-cli scripts).

    email-dlq list [--reason R] [--account A] [--since DURATION] [--search TEXT] [--limit N] [--json]
    email-dlq show ID [--payload] [--json]          (ID: the DLQ id, or the letter's original stream id)
    email-dlq replay (ID... | --all | --reason R | --error-type T) [--dry-run] [--yes] [--json]
    email-dlq purge (ID... | --all | --older-than DURATION | --reason R) [--dry-run] [--yes] [--json]
    email-dlq stats [--json]

Output is one readable line per letter (id, age, reason, account, mailbox, uid, Message-ID);
JSON only with --json. Acting on more than one letter, or on letters chosen by a filter
(--all, --reason, ...), needs --yes; --dry-run says what would happen and changes nothing. An
id that is in no DLQ is named on stderr (exit 1); the others are acted on.

Replay puts the original payload back on the stream it came from (the letter's `stream`
field; older letters: the stream whose DLQ holds them) with its attempts reset and removes it
from the DLQ in one atomic step. DURATION: 90s, 30m, 12h, 7d.

Every command covers the DLQ of each stream the workers read: `--stream` (repeat for
several), else WORKER_STREAMS, else REDIS_STREAM_NAME.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from email_ingestion.admin.common import closed_pipe_is_quiet, server_ms
from email_ingestion.common import entry_fields as F
from email_ingestion.common.cli_args import add_version
from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.errors import AuthError, RedisUnavailableError, SettingsError
from email_ingestion.common.keys import dlq_stream, hash_tag
from email_ingestion.common.redis_client import make_redis, redis_errors
from email_ingestion.common.settings import load_settings
from email_ingestion.common.stream_pages import StreamPages
from email_ingestion.common.text import human_duration, iso_from_epoch_s, printable, to_text
from email_ingestion.worker.dlq_view import Letter, details, table

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
PAGE = 500
STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


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
        """The letters named by `ids` (DLQ ids, else original stream ids), or the oldest `limit`
        (all when None)."""
        if ids:
            return self.find(ids)
        return list(itertools.islice(self.pages(), limit))

    def pages(self) -> Iterator[dict[str, Any]]:
        """Every letter, oldest first, read a page at a time: a DLQ of large payloads is never
        held in memory (nor sent) all at once."""
        yield from (_entry(entry_id, fields) for entry_id, fields in StreamPages(self.redis, self.dlq, page_size=PAGE))

    def find(self, ids: list[str]) -> list[dict[str, Any]]:
        """Letters by DLQ id (one lookup each); ids not found that way are looked for as the
        original stream id, in one pass over the DLQ."""
        found: dict[str, dict[str, Any]] = {}
        for entry_id in dict.fromkeys(ids):
            if STREAM_ID.fullmatch(entry_id):
                raw: Any = self.redis.xrange(self.dlq, entry_id, entry_id)
                found.update((e["id"], e) for e in (_entry(i, f) for i, f in raw))
        wanted = set(ids) - set(found)
        if wanted:
            found.update((e["id"], e) for e in self.pages() if e.get(F.ORIGINAL_ID) in wanted)
        return sorted(found.values(), key=lambda e: _id_key(e["id"]))

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

    def purge(self, ids: list[str]) -> int:
        """Delete exactly these letters (chosen and shown first: nothing newer is swept along)."""
        removed = 0
        for start in range(0, len(ids), 500):
            removed += int(self.redis.xdel(self.dlq, *ids[start:start + 500]))
        return removed

    def stats(self) -> dict[str, Any]:
        now_ms, reasons, error_types, ages = self.clock_ms(), Counter[str](), Counter[str](), []
        for entry in self.pages():
            reasons[entry.get("reason", "?")] += 1
            error_types[entry.get("error_type", "?")] += 1
            ages.append(now_ms - int(entry["id"].split("-")[0]))
        return {
            "dlq": self.dlq, "depth": len(ages),
            "by_reason": dict(reasons),
            "by_error_type": dict(error_types),
            "oldest_age_s": round(max(ages) / 1000, 1) if ages else None,
            "newest_age_s": round(min(ages) / 1000, 1) if ages else None,
        }


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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
    listing = sub.add_parser("list", help="dead letters, oldest first, one line each", parents=common)
    listing.add_argument("--limit", type=int, default=50)
    _filters(listing)
    listing.add_argument("--since", type=parse_duration_s, metavar="DURATION", help="only letters younger than this")
    listing.add_argument("--search", help="text in the id, original id, Message-ID, X-GM-MSGID, idempotency key")
    show = sub.add_parser("show", help="one dead letter in full (by DLQ id or original stream id)", parents=common)
    show.add_argument("id")
    show.add_argument("--payload", action="store_true", help="also print the payload (mail content)")
    for name, text in (("replay", "put payloads back on their stream (attempts reset)"), ("purge", "delete dead letters")):
        action = sub.add_parser(name, help=text, parents=common)
        action.add_argument("ids", nargs="*")
        action.add_argument("--all", action="store_true")
        _filters(action)
        action.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
        action.add_argument("--yes", action="store_true", help="needed to act on more than one letter")
    sub.choices["replay"].add_argument("--error-type")
    sub.choices["purge"].add_argument("--older-than", type=parse_duration_s, metavar="DURATION")
    sub.add_parser("stats", help="counts by reason and error type, ages", parents=common)
    return p


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="permanent, max_retries, max_deliveries, invalid_payload, timeout, ...")
    parser.add_argument("--account", help="the payload's account (IMAP_USER)")


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
    # Ages (list, --since, purge --older-than) against Redis's clock, which stamped the ids:
    # a host clock days off must not make a fresh letter "older than 7d".
    admins = [DlqAdmin(client, stream, dlq_stream(stream, settings.retry.dlq_stream_name),
                       clock_ms=functools.partial(server_ms, client)) for stream in settings.worker_streams()]
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
        print(f"dlq: no dead letter {args.id} (DLQ id or original stream id) in {', '.join(a.dlq for a in admins)}",
              file=sys.stderr)
        return 1
    return _print(result, args.json)


def _check_selection(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command == "replay" and not (args.ids or args.all or args.error_type or args.reason or args.account):
        parser.error("replay needs IDs, --all, --reason, --account or --error-type")
    if args.command == "purge" and not (args.ids or args.all or args.older_than is not None or args.reason
                                        or args.account):
        parser.error("purge needs IDs, --all, --older-than, --reason or --account")


def _run(admins: list[DlqAdmin], args: argparse.Namespace) -> Any:
    """The command over the DLQ of every stream; one stream answers as it always has."""
    if args.command == "list":
        found = _letters(admins, args)
        return Listing(found[:args.limit], total=len(found), streams=len(admins))
    if args.command == "show":
        for admin in admins:
            for entry in admin.find([args.id]):
                return Shown(entry, Letter.of(entry, admin.stream, admin.clock_ms()), args.payload)
        return None
    if args.command in ("replay", "purge"):
        return _act(admins, args)
    stats = [{"stream": admin.stream, **admin.stats()} for admin in admins]
    return stats[0] if len(stats) == 1 else stats


def _letters(admins: list[DlqAdmin], args: argparse.Namespace) -> list[Letter]:
    max_age_s = getattr(args, "since", None)
    found = []
    for admin in admins:
        now_ms = admin.clock_ms()
        for entry in admin.pages():
            letter = Letter.of(entry, admin.stream, now_ms)
            if letter.matches(reason=args.reason, account=args.account, max_age_s=max_age_s,
                              search=getattr(args, "search", None)):
                found.append(letter)
    return found


@dataclass(frozen=True)
class Listing:
    letters: list[Letter]
    total: int
    streams: int


@dataclass(frozen=True)
class Shown:
    entry: dict[str, Any]
    letter: Letter
    with_payload: bool


@dataclass(frozen=True)
class Plan:
    """What replay or purge would touch; `done` once it acted."""

    command: str
    letters: list[Letter]
    done: list[dict[str, str]]
    acted: bool
    refused: bool = False
    missing: list[str] = field(default_factory=list)  # ids named that are not in any DLQ


def _act(admins: list[DlqAdmin], args: argparse.Namespace) -> Plan:
    chosen = [(admin, letter) for admin in admins for letter in _chosen(admin, args)]
    letters = [letter for _, letter in chosen]
    missing = [i for i in args.ids if not any(i in (letter.id, letter.original_id) for letter in letters)]
    if args.dry_run:
        return Plan(args.command, letters, [], acted=False, missing=missing)
    # A filter (--all, --reason, ...) picks whatever matches at this moment, possibly a letter
    # the operator never saw: only one letter named by its id goes without --yes.
    if (len(letters) > 1 or not args.ids) and letters and not args.yes:
        return Plan(args.command, letters, [], acted=False, refused=True, missing=missing)
    done: list[dict[str, str]] = []
    for admin in admins:
        ids = [letter.id for owner, letter in chosen if owner is admin]
        if not ids:
            continue
        if args.command == "replay":
            done += admin.replay(ids)
        else:
            removed = admin.purge(ids)
            done += [{"dlq_id": i, "stream": admin.stream} for i in ids[:removed]]
    return Plan(args.command, letters, done, acted=True, missing=missing)


def _chosen(admin: DlqAdmin, args: argparse.Namespace) -> list[Letter]:
    now_ms = admin.clock_ms()
    older_than_s = getattr(args, "older_than", None)
    letters = []
    for entry in admin.find(args.ids) if args.ids else admin.pages():
        letter = Letter.of(entry, admin.stream, now_ms)
        if getattr(args, "error_type", None) and letter.error_type != args.error_type:
            continue
        if older_than_s is not None and letter.age_s < older_than_s:
            continue
        if letter.matches(reason=args.reason, account=args.account, max_age_s=None, search=None):
            letters.append(letter)
    return letters


SHOWN_LINES = 20


def _print(result: Any, as_json: bool) -> int:
    if isinstance(result, Listing):
        return _print_listing(result, as_json)
    if isinstance(result, Shown):
        print(json.dumps(_with_times(result.entry), indent=2, sort_keys=True) if as_json else
              "\n".join(details(result.entry, result.letter, result.with_payload)))
        return 0
    if isinstance(result, Plan):
        return _print_plan(result, as_json)
    print(json.dumps(result, indent=2, sort_keys=True) if as_json else "\n".join(_stats_lines(result)))
    return 0


def _print_listing(listing: Listing, as_json: bool) -> int:
    if as_json:
        print(json.dumps([letter.row() for letter in listing.letters], indent=2, sort_keys=True))
    elif not listing.letters:
        print("(no dead letters match)")
    else:
        print("\n".join(table(listing.letters, listing.streams)))
        if listing.total > len(listing.letters):
            print(f"... {listing.total - len(listing.letters)} more (--limit, or narrow with --reason/--account/--since)")
    return 0


def _print_plan(plan: Plan, as_json: bool) -> int:
    for missing in plan.missing:
        print(f"dlq: no dead letter {printable(missing)} (DLQ id or original stream id)", file=sys.stderr)
    moved = {d["dlq_id"] for d in plan.done}
    untouched = [letter.id for letter in plan.letters if letter.id not in moved] if plan.acted else []
    for letter_id in untouched:
        print(f"dlq: {letter_id} not {plan.command.removesuffix('e')}ed: gone meanwhile (another operator or worker "
              "acted on it), no payload to replay, or its stream is not one of these", file=sys.stderr)
    code = _print_plan_body(plan, as_json)
    return code or (1 if plan.missing or untouched else 0)


def _print_plan_body(plan: Plan, as_json: bool) -> int:
    verb = "replayed" if plan.command == "replay" else "purged"
    if as_json:
        # replayed: each letter's new stream id; purged: how many (and which).
        done: Any = plan.done if plan.command == "replay" else len(plan.done)
        print(json.dumps({"acted": plan.acted, "refused": plan.refused, "matched": len(plan.letters),
                          verb: done, "ids": [d["dlq_id"] for d in plan.done],
                          "would": [letter.id for letter in plan.letters] if not plan.acted else [],
                          "missing": plan.missing},
                         indent=2, sort_keys=True))
        return 1 if plan.refused else 0
    elif plan.acted:
        print(f"{verb} {len(plan.done)} of {len(plan.letters)} dead letters")
        for done in plan.done[:SHOWN_LINES]:
            target = f" -> {printable(done['stream'])} {done['stream_id']}" if "stream_id" in done else ""
            print(f"  {done['dlq_id']}{target}")
        if len(plan.done) > SHOWN_LINES:
            print(f"  ... and {len(plan.done) - SHOWN_LINES} more (--json lists every one)")
    else:
        would = "would be " + verb
        print(f"{len(plan.letters)} dead letters {would}:" if plan.letters else f"no dead letter matches: none {would}")
        if plan.letters:
            print("\n".join(table(plan.letters[:SHOWN_LINES], 1)))
        if len(plan.letters) > SHOWN_LINES:
            print(f"... and {len(plan.letters) - SHOWN_LINES} more")
        if plan.refused:
            print(f"{plan.command}: {len(plan.letters)} letter(s) chosen by a filter or more than one: add --yes to "
                  f"{plan.command} them (nothing was changed)", file=sys.stderr)
            return 1
    return 0


def _stats_lines(result: Any) -> list[str]:
    lines = []
    for stats in result if isinstance(result, list) else [result]:
        reasons = ", ".join(f"{printable(k)} {v}" for k, v in sorted(stats["by_reason"].items())) or "-"
        lines.append(f"{stats['dlq']}: {stats['depth']} dead letters ({reasons}); oldest "
                     f"{human_duration(stats['oldest_age_s'])}, newest {human_duration(stats['newest_age_s'])} ago")
    return lines


def _with_times(entry: dict[str, Any]) -> dict[str, Any]:
    """Each `*_ms` instant also as ISO 8601 UTC (`first_failure_ms` -> `first_failure`)."""
    timed = dict(entry)
    for key, value in entry.items():
        if key.endswith("_ms") and str(value).isdigit():
            timed[key.removesuffix("_ms")] = iso_from_epoch_s(int(value) / 1000)
    return timed


if __name__ == "__main__":
    sys.exit(main())
