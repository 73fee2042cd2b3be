"""The upgrade to keys that name their stream (issue 19 item 1), done by workers at start.

Before, a stream with a hash tag of its own (`{mail}alice`) kept its retry set, retry records
and DLQ under names made of the tag alone, shared with every stream of the same tag. Those
names are now per stream (common/keys.py); a stream without a tag of its own kept its names.

At start a worker moves what waits under the old names of each of its tagged streams into
the new ones, atomically (same slot: both carry the tag):
- retries: every record that has no namesake under the new name (the new one wins: it is
  newer); the record's due time is kept, so it returns to the stream when it was due;
- the DLQ: renamed when the new one does not exist yet; otherwise left and reported.
The old names of `{mail}x` are also the current names of a stream called `mail` (no braces):
while that stream exists they are its own and are left alone (what waits there is handled on
`mail`, as the old version did for both).
The old names cannot tell which stream a retry came from: when several streams shared a tag,
the first worker to start takes them all to its own stream. Each is still handled once more
(never lost); it may be handled by that stream's handler.
Idempotency markers are not moved: an entry pending at the upgrade may be handled once more
(at-least-once); heartbeats are renewed within a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from email_ingestion.common.keys import StreamKeys, hash_tag, legacy_consumer_base, legacy_dlq_stream, stream_segment

log = logging.getLogger(__name__)

BATCH = 500

# KEYS: old due zset, old records hash, new due zset, new records hash, the untagged stream
# the old names belong to now; ARGV: offset, max.
# A record whose id is taken under the new name (entry ids of different streams can be
# equal) stays where it is, counted, never overwritten. Returns {moved, kept, page length}.
_MOVE_RETRIES = """
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, 0, 0} end
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1, 'WITHSCORES')
local moved, kept = 0, 0
for i = 1, #page, 2 do
  local id, due = page[i], page[i + 1]
  local record = redis.call('HGET', KEYS[2], id)
  if redis.call('HEXISTS', KEYS[4], id) == 1 then
    kept = kept + 1
  else
    if record then
      redis.call('HSET', KEYS[4], id, record)
      redis.call('ZADD', KEYS[3], due, id)
      redis.call('HDEL', KEYS[2], id)
      moved = moved + 1
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
return {moved, kept, #page / 2}
"""

# KEYS: old DLQ, new DLQ, the untagged stream the old name belongs to now; ARGV: max to move.
# Renamed whole (ids kept) when the new one does not exist; else moved a page at a time (new
# ids; each letter keeps its dead_at_ms).
# Returns the number of letters left under the old name.
_MOVE_DLQ = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 0
end
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])) do
  redis.call('XADD', KEYS[2], '*', unpack(entry[2]))
  redis.call('XDEL', KEYS[1], entry[1])
end
local left = redis.call('XLEN', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[1]) end
return left
"""


@dataclass(frozen=True)
class Migrated:
    retries: int = 0
    kept_old: int = 0  # retries left under the old name: their id is taken under the new one
    dead_letters: bool = False  # the old DLQ was moved


def migrate(client: redis.Redis, keys: StreamKeys, dlq_name: str) -> Migrated:
    """Move what a tagged stream's old key names hold to its new ones (nothing to do for a
    stream without a tag of its own)."""
    if not stream_segment(keys.stream):
        return Migrated()
    base = legacy_consumer_base(keys.stream, keys.group)
    # The old names of `{mail}x` are the current names of the untagged stream `mail`: while it
    # exists, they are its own (checked in each script, atomically with the move).
    untagged = hash_tag(keys.stream)[1:-1]
    move = client.register_script(_MOVE_RETRIES)
    moved = kept = 0
    while True:
        done, stayed, seen = move(keys=[f"{base}:retry:due", f"{base}:retry:data", keys.retries,
                                        keys.retry_payloads, untagged], args=[kept, BATCH])
        moved, kept = moved + int(done), kept + int(stayed)
        if int(seen) < BATCH:
            break
    old_dlq = legacy_dlq_stream(keys.stream, dlq_name)
    exists = bool(client.exists(old_dlq)) and not client.exists(untagged)
    move_dlq = client.register_script(_MOVE_DLQ)
    while int(move_dlq(keys=[old_dlq, keys.dlq, untagged], args=[BATCH])):
        pass
    result = Migrated(moved, kept, exists)
    _report(keys, result)
    return result


def _report(keys: StreamKeys, result: Migrated) -> None:
    if result.retries or result.kept_old or result.dead_letters:
        log.warning("moved retries and dead letters from key names shared by every stream of the tag",
                    extra={"stream": keys.stream, "retries": result.retries, "dlq_moved": result.dead_letters,
                           "retries_left_under_old_name": result.kept_old})
