"""`email-ingest mailbox show|reset`: a mailbox's stored position, and moving it back to
re-ingest or backfill (docs/runbooks/reingest-backfill.md).

    email-ingest mailbox show --account A --mailbox M
    email-ingest mailbox reset --account A --mailbox M --uid N [--forget-done] --yes

`reset` sets `last_uid` to N, keeping UIDVALIDITY: the producer's next pass emits every
message above N again, up to the old position (or the re-sync target, whichever is higher),
including copies that a UIDVALIDITY re-sync had recognised and skipped (`replay_until`).
It is refused, with one line, while a producer holds the mailbox's lease (a running one
would move the position forward in between): stop it first. Messages handled within IDEMPOTENCY_TTL_SECONDS are then
counted as duplicates by the workers and not handled again: a reset alone never repeats an
effect. `--forget-done` also deletes the done markers of this mailbox's messages above N so the
handler does see them again (on Gmail, where keys carry the account and X-GM-MSGID but no
mailbox, that is every done marker of the account). Markers of messages being handled right
now (leases) are never touched.
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
    parser,
    target,
)
from email_ingestion.admin.snapshot import iso_ms
from email_ingestion.common.keys import MailboxKeys
from email_ingestion.common.text import to_text
from email_ingestion.imap.names import canonical_folder
from email_ingestion.monitoring.heartbeats import glob_escape
from email_ingestion.producer.state import StateStore

# KEYS: done markers; deletes those that say done (never a lease in force).
_FORGET = """
local removed = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'done' then removed = removed + redis.call('DEL', key) end
end
return removed
"""


def position(client: redis.Redis, keys: MailboxKeys) -> dict[str, Any] | None:
    state = {to_text(k): to_text(v) for k, v in client.hgetall(keys.state).items()}
    return {k: int(v) for k, v in state.items() if v.lstrip("-").isdigit()} if state else None


def reset(client: redis.Redis, keys: MailboxKeys, uid: int) -> dict[str, Any]:
    """Move last_uid to `uid` (never forward), atomically; what it was and what it is now."""
    before = position(client, keys)
    StateStore(client=client, keys=keys).rewind(uid)
    return {"before": before, "after": position(client, keys)}


def forget_done(where: Target, account: str, mailbox: str, above_uid: int) -> int:
    """Delete the done markers of this mailbox's messages above `above_uid` (IMAP keys end in
    the UID), and every done marker of the account on Gmail (its keys carry no UID)."""
    script = where.client.register_script(_FORGET)
    imap = where.keys.idempotency(f"imap:{account}:{mailbox}:")
    removed = 0
    def keep_imap(key: bytes) -> bool:
        return int(key.rsplit(b":", 1)[1]) <= above_uid

    def keep_none(key: bytes) -> bool:
        return False

    for prefix, keep in ((imap, keep_imap), (where.keys.idempotency(f"gm:{account}:"), keep_none)):
        batch = [key for key in where.client.scan_iter(match=glob_escape(prefix) + "*", count=1000) if not keep(key)]
        for start in range(0, len(batch), 500):
            removed += int(script(keys=batch[start:start + 500]))
    return removed


def _parser() -> argparse.ArgumentParser:
    p = parser("email-ingest mailbox", "Show or reset a mailbox's stored position.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="action", required=True)
    for name, text in (("show", "the stored UIDVALIDITY, last UID and times"),
                       ("reset", "move last_uid back so the producer emits the messages above it again")):
        action = sub.add_parser(name, help=text)
        action.add_argument("--account", required=True, help="IMAP_USER of the mailbox")
        action.add_argument("--mailbox", required=True, help="IMAP_MAILBOX, e.g. INBOX")
        # Accepted after the action too: `mailbox show --json` is how people type it.
        action.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    resetting = sub.choices["reset"]
    resetting.add_argument("--uid", type=int, required=True, help="new last_uid: 0 re-ingests everything")
    resetting.add_argument("--forget-done", action="store_true", help="also delete done markers: handlers see them again")
    resetting.add_argument("--yes", action="store_true", help="do it (without: say what would change)")
    return p


def run(args: argparse.Namespace, where: Target) -> dict[str, Any]:
    mailbox = canonical_folder(args.mailbox)  # "inbox" is INBOX, as the producer keys it
    keys = MailboxKeys(where.stream, args.account, mailbox)
    if args.action == "show":
        return {"account": args.account, "mailbox": mailbox, "position": position(where.client, keys)}
    if not args.yes:
        return {"would_reset_to": args.uid, "position": position(where.client, keys), "changed": False}
    result = reset(where.client, keys, args.uid)
    if args.forget_done:
        result["done_markers_deleted"] = forget_done(where, args.account, mailbox, args.uid)
    return {**result, "changed": True}


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load(args, "mailbox")
    if settings is None:
        return EXIT_SETTINGS
    try:
        result = run(args, target(settings))
    except (LookupError, ValueError) as exc:
        print(f"mailbox: {exc}", file=sys.stderr)
        return EXIT_DEGRADED
    except redis.RedisError as exc:
        print(f"mailbox: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_DEGRADED
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else "\n".join(readable(result)))
    return EXIT_HEALTHY


def readable(value: Any, indent: str = "") -> list[str]:
    """`key: value` lines; epoch-millisecond fields (`*_ms`) as ISO 8601 instants."""
    lines: list[str] = []
    for key, item in sorted(value.items()) if isinstance(value, dict) else []:
        if isinstance(item, dict):
            lines += [f"{indent}{key}:", *readable(item, indent + "  ")]
        elif key.endswith("_at_ms") or key in ("since_ms", "synced_at_ms", "updated_at_ms"):
            lines.append(f"{indent}{key.removesuffix('_ms')}: {iso_ms(int(item)) if item else '-'}")
        else:
            lines.append(f"{indent}{key}: {'(none)' if item is None else item}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
