"""One stream entry as handed to this worker, its fields (common/entry_fields.py) as properties."""

from __future__ import annotations

from dataclasses import dataclass

from email_ingestion.common import entry_fields as F
from email_ingestion.common.text import to_text

# Field names as the bytes Redis returns: looked up several times per message.
_PAYLOAD, _ATTEMPT, _FIRST_FAILED_MS, _LAST_ERROR, _ORIGINAL_ID, _DELIVERIES = (
    name.encode() for name in (F.PAYLOAD, F.ATTEMPT, F.FIRST_FAILED_MS, F.LAST_ERROR, F.ORIGINAL_ID, F.DELIVERIES))


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    raw: dict[bytes, bytes]  # the entry's fields as Redis returned them
    deliveries: int  # Redis's delivery counter: 1 on the first read

    @classmethod
    def from_redis(cls, entry_id: bytes | str, fields: dict[bytes, bytes] | None, deliveries: int = 1) -> Delivery:
        return cls(to_text(entry_id), fields or {}, deliveries)

    def _text(self, name: bytes, default: str = "") -> str:
        value = self.raw.get(name)
        return default if value is None else to_text(value)

    def _int(self, name: bytes) -> int:
        value = self.raw.get(name)
        if value is None:  # a fresh message has none of the counters
            return 0
        try:
            return int(value)
        except ValueError:
            return 0

    @property
    def payload(self) -> bytes:
        """The payload JSON, undecoded: pydantic validates bytes directly."""
        return self.raw.get(_PAYLOAD, b"")

    @property
    def attempt(self) -> int:
        """Failed attempts before this delivery (0 for a fresh message)."""
        return self._int(_ATTEMPT)

    @property
    def first_failed_ms(self) -> int:
        """When the first attempt failed (0: it has not failed yet)."""
        return self._int(_FIRST_FAILED_MS)

    @property
    def last_error(self) -> str:
        return self._text(_LAST_ERROR)

    @property
    def original_id(self) -> str:
        """The id the message first had on the stream (retries and deferrals re-add it)."""
        return self._text(_ORIGINAL_ID, self.entry_id)

    @property
    def delivered(self) -> int:
        """Deliveries of this message so far, this one included: Redis's counter of this
        entry plus those that ended without an outcome on the entries it had before."""
        return self._int(_DELIVERIES) + self.deliveries
