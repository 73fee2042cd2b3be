"""The dead-letter queue: a stream beside the main one. A message moves there in the same
atomic step that acknowledges it, so it is never both pending and dead, nor neither."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from email_ingestion.common.keys import StreamKeys

# KEYS: stream, dlq, idempotency key (may be a dummy); ARGV: group, entry id, lease, fields...
_DEAD_LETTER = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
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

    def fields(self) -> list[str]:
        values = {**self.__dict__, "traceback": self.traceback[-TRACEBACK_CHARS:],
                  "error_message": self.error_message[:2000], "dead_at_ms": int(time.time() * 1000)}
        return [str(part) for pair in values.items() for part in pair]


class DeadLetterQueue:
    def __init__(self, client: redis.Redis, stream: str, group: str, dlq: str, keys: StreamKeys) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.dlq = dlq
        self.keys = keys
        self._script = client.register_script(_DEAD_LETTER)

    def send(self, pipe: redis.client.Pipeline, entry_id: str, letter: DeadLetter,
             idempotency_key: str = "", lease: str = "") -> None:
        key = self.keys.idempotency(idempotency_key or "-")
        self._script(keys=[self.stream, self.dlq, key], args=[self.group, entry_id, lease, *letter.fields()],
                     client=pipe)

    def depth(self) -> int:
        return int(self.redis.xlen(self.dlq))
