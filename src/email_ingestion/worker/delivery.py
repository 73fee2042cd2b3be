"""One stream entry as handed to this worker."""

from __future__ import annotations

from dataclasses import dataclass

from email_ingestion.common.text import to_text


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    raw: dict[bytes, bytes]  # the entry's fields as Redis returned them
    deliveries: int  # Redis's delivery counter: 1 on the first read

    @classmethod
    def from_redis(cls, entry_id: bytes | str, fields: dict[bytes, bytes] | None, deliveries: int = 1) -> Delivery:
        return cls(to_text(entry_id), fields or {}, deliveries)

    @property
    def payload(self) -> bytes:
        """The payload JSON, undecoded: pydantic validates bytes directly."""
        return self.raw.get(b"payload", b"")

    @property
    def fields(self) -> dict[str, str]:
        """Decoded fields, for the rare paths (retries, dead letters)."""
        return {to_text(k): to_text(v) for k, v in self.raw.items()}

    @property
    def attempt(self) -> int:
        """Failed attempts before this delivery (0 for a fresh message)."""
        try:
            return int(self.raw.get(b"attempt", b"0"))
        except ValueError:
            return 0
