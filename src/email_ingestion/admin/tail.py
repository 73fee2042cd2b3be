"""`email-ingest tail [--follow] [--count N] [--show-content]`: the newest payloads, summarised.

By default a line names no person and no subject: stream id, mailbox, UID, the sender's
domain, the subject's length, size and attachments. `--show-content` adds the sender's
address and the subject (mind who is looking over your shoulder).
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import redis

from email_ingestion.admin.common import EXIT_DEGRADED, EXIT_HEALTHY, EXIT_SETTINGS, closed_pipe_is_quiet, load, parser, target
from email_ingestion.common import entry_fields as F
from email_ingestion.common.text import to_text

FOLLOW_BLOCK_MS = 1000


def summary(entry_id: Any, fields: dict[bytes, bytes], show_content: bool) -> str:
    raw = fields.get(F.PAYLOAD.encode(), b"{}")
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return f"{to_text(entry_id)} (payload is not a JSON object: {len(raw)} bytes)"
    sender_field = payload.get("from")
    sender = str((sender_field if isinstance(sender_field, dict) else {}).get("address") or "")
    subject = str(payload.get("subject") or "")
    # Only a real domain: without '@' the "address" may be a name or raw header text.
    domain = sender.rpartition("@")[2] if "@" in sender else "-"
    line = (f"{to_text(entry_id)} mailbox={payload.get('mailbox')} uid={payload.get('uid')} "
            f"from_domain={domain or '-'} subject_chars={len(subject)} size={payload.get('size')} "
            f"attachments={len(payload.get('attachments') or [])}")
    if show_content:
        line += f" from={sender} subject={subject!r}"
    return line


def newest(client: redis.Redis, stream: str, count: int) -> list[tuple[Any, dict[bytes, bytes]]]:
    """The newest `count` entries, oldest first (as `tail` prints)."""
    entries: Any = client.xrevrange(stream, count=count)
    return list(reversed(entries))


def follow_from(client: redis.Redis, stream: str, printed: list[tuple[Any, dict[bytes, bytes]]], count: int) -> str:
    """Where --follow starts: right after the last entry printed, from the same read. A
    second look at the stream's top would skip what was added between the two reads (under
    load, the entries a producer added while the listing was being printed)."""
    if printed:
        return to_text(printed[-1][0])
    if count > 0:
        return "0-0"  # the stream was empty when listed: everything added since is new
    top: Any = client.xrevrange(stream, count=1)  # --count 0: only what comes after now
    return to_text(top[0][0]) if top else "0-0"


def follow(client: redis.Redis, stream: str, last_id: str, show_content: bool, stop: list[bool]) -> None:
    while not stop:
        replies: Any = client.xread({stream: last_id}, block=FOLLOW_BLOCK_MS) or []
        for _, entries in replies:
            for entry_id, fields in entries:
                print(summary(entry_id, fields, show_content), flush=True)
                last_id = to_text(entry_id)


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    p = parser("email-ingest tail", "Summaries of the newest payloads in the stream.")
    p.add_argument("--count", type=int, default=10, help="how many of the newest entries (default 10)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries until Ctrl-C/SIGTERM")
    p.add_argument("--show-content", action="store_true", help="also print the sender's address and the subject")
    args = p.parse_args(argv)
    settings = load(args, "tail")
    if settings is None:
        return EXIT_SETTINGS
    where = target(settings)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        entries = newest(where.client, where.stream, args.count)
        for entry_id, fields in entries:
            print(summary(entry_id, fields, args.show_content), flush=True)
        if args.follow:
            follow(where.client, where.stream, follow_from(where.client, where.stream, entries, args.count),
                   args.show_content, stop)
    except KeyboardInterrupt:
        return EXIT_HEALTHY
    except redis.RedisError as exc:
        print(f"tail: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_DEGRADED
    return EXIT_HEALTHY


if __name__ == "__main__":
    sys.exit(main())
