"""Retries that never sleep in a worker: a failed message leaves the stream (acked) and
waits in a due-time sorted set; any worker moves due ones back into the stream.

Both moves are Lua scripts, so a message is always in exactly one place: pending in the
stream, scheduled in the retry set, or in the DLQ. Field names reach the scripts as ARGV
(common/entry_fields.py), so the entry format is spelled in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from email_ingestion.common import entry_fields as F
from email_ingestion.common.keys import StreamKeys

# KEYS: stream, due zset, records hash, idempotency key
# ARGV: group, entry id, record json, due ms, lease value
_SCHEDULE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: stream, due zset, records hash; ARGV: now ms, max to move, then the entry field names
# (the record's JSON keys are the same names).
_MOVE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[3], id)
  if raw then
    local r = cjson.decode(raw)
    local fields = {}
    for i = 3, #ARGV do
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = tostring(r[ARGV[i]])
    end
    redis.call('XADD', KEYS[1], '*', unpack(fields))
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
local following = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#ids, following[2] or false}
"""

RECORD_FIELDS = (F.PAYLOAD, F.ATTEMPT, F.FIRST_FAILED_MS, F.LAST_ERROR, F.ORIGINAL_ID)


@dataclass(frozen=True)
class RetryRecord:
    payload: str  # the payload JSON as text
    attempt: int  # failed attempts so far
    first_failed_ms: int
    last_error: str
    original_id: str

    def to_json(self) -> str:
        values = (self.payload, self.attempt, self.first_failed_ms, self.last_error, self.original_id)
        return json.dumps(dict(zip(RECORD_FIELDS, values, strict=True)))


class RetrySchedule:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys) -> None:
        self.redis = client
        self.keys = keys
        self._schedule = client.register_script(_SCHEDULE)
        self._move = client.register_script(_MOVE_DUE)

    def schedule(self, pipe: redis.client.Pipeline, entry_id: str, record: RetryRecord, due_ms: int,
                 idempotency_key: str, lease: str) -> None:
        keys = [self.keys.stream, self.keys.retries, self.keys.retry_payloads, self.keys.idempotency(idempotency_key)]
        self._schedule(keys=keys, args=[self.keys.group, entry_id, record.to_json(), due_ms, lease], client=pipe)

    def move_due(self, now_ms: int, limit: int = 500) -> tuple[int, int | None]:
        """Move retries due at `now_ms` back into the stream. Returns (moved, next due ms)."""
        moved, following = self._move(keys=[self.keys.stream, self.keys.retries, self.keys.retry_payloads],
                                      args=[now_ms, limit, *RECORD_FIELDS])
        return int(moved), int(float(following)) if following else None

    def waiting(self) -> int:
        return int(self.redis.zcard(self.keys.retries))
