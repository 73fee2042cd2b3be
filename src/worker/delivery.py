"""One stream entry as handed to this worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    fields: dict[str, str]
    deliveries: int  # Redis's delivery counter: 1 on the first read

    @classmethod
    def from_redis(cls, entry_id: bytes | str, fields: dict[bytes, bytes] | None, deliveries: int = 1) -> "Delivery":
        decoded = {_s(k): _s(v) for k, v in (fields or {}).items()}
        return cls(_s(entry_id), decoded, deliveries)

    @property
    def payload(self) -> str:
        return self.fields.get("payload", "")

    @property
    def attempt(self) -> int:
        """Failed attempts before this delivery (0 for a fresh message)."""
        try:
            return int(self.fields.get("attempt", "0"))
        except ValueError:
            return 0

    @property
    def enqueued_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
