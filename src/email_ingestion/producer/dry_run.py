"""Stand-ins for the Redis side when `--dry-run` is given: print, write nothing."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import MailboxState


class DryRunStore:
    """Behaves like StateStore with an empty Redis, printing one line per message instead."""

    def __init__(self, out: TextIO = sys.stdout, on_closed: Callable[[], None] | None = None) -> None:
        self.out = out
        self.count = 0
        self.on_closed = on_closed
        self.closed = False

    def load(self) -> MailboxState | None:
        return None

    def emit(self, uidvalidity: int, last_uid: int, items: Sequence[Emission], since_ms: int = 0) -> list[str]:
        try:
            self._print(items)
        except BrokenPipeError:
            self._reader_left()
        self.count += len(items)
        return [f"dry-run-{item.uid}" for item in items]

    def _print(self, items: Sequence[Emission]) -> None:
        for item in items:
            if self.closed:
                return
            payload = json.loads(item.payload)
            sender = (payload.get("from") or {}).get("address", "")
            print(f"uid={item.uid} date={payload['date']} size={payload['size']} from={sender} "
                  f"attachments={len(payload['attachments'])} defects={len(payload['parse_defects'])} "
                  f"subject={payload['subject']!r}", file=self.out)

    def _reader_left(self) -> None:
        """`--dry-run | head`: the reader has gone. Stop quietly, as `cat` does: point stdout at
        /dev/null so the final flush at exit cannot raise again, and ask the producer to stop."""
        self.closed = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
        except (OSError, ValueError):
            pass  # not a real file (tests): nothing will flush it at exit
        if self.on_closed is not None:
            self.on_closed()

    def start(self, uidvalidity: int, *, position: int, since_ms: int, baseline_until: int) -> MailboxState:
        return MailboxState(uidvalidity, position, since_ms)  # no baseline: nothing is recorded

    def record_baseline(self, uidvalidity: int, fingerprints: Sequence[str], done_until: int) -> bool:
        return False

    def gated(self, uidvalidity: int, fingerprints: Sequence[str]) -> list[bool]:
        return [False] * len(fingerprints)


class NullGuard:
    max_unacked = 0

    def is_full(self) -> bool:
        return False

    def trim_acknowledged(self) -> int:
        return 0
