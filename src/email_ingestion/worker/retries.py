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

# Due times are Redis server time (TIME), never a worker's clock: one host running fast
# must not collapse everyone's backoff (issue 10 item 12).
_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: stream, due zset, records hash, idempotency key
# ARGV: group, entry id, record json, delay ms, lease value
# Only an entry still pending is scheduled: a settlement replayed after a lost reply (or a
# Redis restart) finds it acknowledged and adds no second copy.
_SCHEDULE = _NOW_MS + """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[2])
if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: stream, due zset, records hash; ARGV: max to move, ms to look ahead (0 but in tests),
# then the entry field names (the record's JSON keys are the same names).
# Returns {moved, ms until the next is due | false}.
_MOVE_DUE = _NOW_MS + """
now_ms = now_ms + tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, ARGV[1])
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[3], id)
  if raw then
    local r = cjson.decode(raw)
    local fields = {}
    for i = 3, #ARGV do
      if r[ARGV[i]] ~= nil then
        fields[#fields + 1] = ARGV[i]
        fields[#fields + 1] = r[ARGV[i]]
      end
    end
    redis.call('XADD', KEYS[1], '*', unpack(fields))
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
local following = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if following[2] then return {#ids, math.max(0, tonumber(following[2]) - now_ms)} end
return {#ids, false}
"""

RECORD_FIELDS = (F.PAYLOAD, F.ATTEMPT, F.FIRST_FAILED_MS, F.LAST_ERROR, F.ORIGINAL_ID, F.DELIVERIES)


@dataclass(frozen=True)
class RetryRecord:
    payload: str  # the payload JSON as text
    attempt: int  # failed attempts so far
    first_failed_ms: int
    last_error: str
    original_id: str
    deliveries: int = 0  # earlier deliveries that ended without an outcome (see entry_fields)

    def to_json(self) -> str:
        values = (self.payload, self.attempt, self.first_failed_ms, self.last_error, self.original_id,
                  self.deliveries)
        return json.dumps(dict(zip(RECORD_FIELDS, values, strict=True)))


class RetrySchedule:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys) -> None:
        self.redis = client
        self.keys = keys
        self._schedule = client.register_script(_SCHEDULE)
        self._move = client.register_script(_MOVE_DUE)

    def schedule(self, pipe: redis.client.Pipeline, entry_id: str, record: RetryRecord, delay_ms: int,
                 idempotency_key: str, lease: str) -> None:
        """Acknowledge `entry_id` and schedule `record` `delay_ms` from now (Redis time)."""
        keys = [self.keys.stream, self.keys.retries, self.keys.retry_payloads, self.keys.idempotency(idempotency_key)]
        self._schedule(keys=keys, args=[self.keys.group, entry_id, record.to_json(), delay_ms, lease], client=pipe)

    def move_due(self, limit: int = 500, ahead_ms: int = 0) -> tuple[int, int | None]:
        """Move retries that are due (Redis time, plus `ahead_ms` for tests that pass time in)
        back into the stream. Returns (moved, ms until the next one is due, or None)."""
        return _moved(self._move(keys=[self.keys.stream, self.keys.retries, self.keys.retry_payloads],
                                 args=[limit, ahead_ms, *RECORD_FIELDS]))

    def move_due_in(self, pipe: redis.client.Pipeline, limit: int = 500) -> None:
        """Queue move_due() in `pipe`; parse its reply with moved_reply()."""
        self._move(keys=[self.keys.stream, self.keys.retries, self.keys.retry_payloads],
                   args=[limit, 0, *RECORD_FIELDS], client=pipe)

    def waiting(self) -> int:
        return int(self.redis.zcard(self.keys.retries))


def _moved(reply: list[int | None]) -> tuple[int, int | None]:
    moved, following = reply
    return int(moved or 0), None if following is None else int(following)


moved_reply = _moved
