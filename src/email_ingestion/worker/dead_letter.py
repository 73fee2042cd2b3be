"""The dead-letter queue: a stream beside the main one. A message moves there in the same
atomic step that acknowledges it, so it is never both pending and dead, nor neither.
Each letter records the stream it came from (`stream`), where `email-dlq replay` returns it."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from email_ingestion.common import entry_fields as F
from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.keys import StreamKeys

# KEYS: stream, dlq, idempotency key (may be a dummy); ARGV: group, entry id, lease, fields...
# Only an entry still pending moves: a replayed settlement adds no second dead letter.
_DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return id
"""

TRACEBACK_CHARS = 4000


@dataclass(frozen=True)
class DeadLetter:
    payload: str
    original_id: str
    reason: str  # permanent | max_retries | max_deliveries | invalid_payload
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    first_failure_ms: int
    last_failure_ms: int
    consumer: str

    def fields(self, dead_at_ms: int) -> list[str]:
        """Field/value pairs for XADD; `dead_at_ms` comes from the caller's clock."""
        values = {**self.__dict__, F.PAYLOAD: self.payload, F.ORIGINAL_ID: self.original_id,
                  "traceback": self.traceback[-TRACEBACK_CHARS:],
                  "error_message": self.error_message[:2000], "dead_at_ms": dead_at_ms}
        return [str(part) for pair in values.items() for part in pair]


class DeadLetterQueue:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys, clock_ms: Clock = wall_ms) -> None:
        self.redis = client
        self.keys = keys
        self.clock_ms = clock_ms
        self._script = client.register_script(_DEAD_LETTER)

    def send(self, pipe: redis.client.Pipeline, entry_id: str, letter: DeadLetter,
             idempotency_key: str = "", lease: str = "") -> None:
        key = self.keys.idempotency(idempotency_key or "-")
        fields = [*letter.fields(self.clock_ms()), F.SOURCE_STREAM, self.keys.stream]
        self._script(keys=[self.keys.stream, self.keys.dlq, key], args=[self.keys.group, entry_id, lease, *fields],
                     client=pipe)

    def depth(self) -> int:
        return int(self.redis.xlen(self.keys.dlq))
