"""Stand-ins for the Redis side when `--dry-run` is given: print, write nothing."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import MailboxState


class DryRunStore:
    """Behaves like StateStore with an empty Redis, printing one line per message instead."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.count = 0

    def load(self) -> MailboxState | None:
        return None

    def emit(self, uidvalidity: int, last_uid: int, items: Sequence[Emission], since_ms: int = 0) -> list[str]:
        for item in items:
            payload = json.loads(item.payload)
            sender = (payload.get("from") or {}).get("address", "")
            print(f"uid={item.uid} date={payload['date']} size={payload['size']} from={sender} "
                  f"attachments={len(payload['attachments'])} defects={len(payload['parse_defects'])} "
                  f"subject={payload['subject']!r}", file=self.out)
        self.count += len(items)
        return [f"dry-run-{item.uid}" for item in items]

    def seen(self, fingerprints: Sequence[str]) -> list[bool]:
        return [False] * len(fingerprints)


class NullGuard:
    max_unacked = 0

    def is_full(self) -> bool:
        return False

    def trim_acknowledged(self) -> int:
        return 0
