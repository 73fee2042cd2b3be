"""The producer's Redis state: UID position per mailbox, the dedup index, and the stream.

Entries and state move together in one Lua script: the dedup check, the XADD, the
fingerprint record and the advance of `last_uid` happen atomically. A crash before the
script leaves nothing written; after it, everything. A script whose reply was lost
(connection dropped mid-call), or a second producer racing on the same mailbox, runs the
same batch again and adds nothing: within one UIDVALIDITY, a UID at or below the stored
position is already in the stream.

Fingerprints (see identity.py) are consulted only after a UIDVALIDITY change, where UIDs
mean nothing any more, for the UIDs up to `resync_until` that the change stored (so a
re-sync interrupted by a crash or a dropped connection resumes as a re-sync). They are not
used otherwise because two distinct messages can share them (mail re-sent by a list, test
fixtures): checking them on every message would silently drop the second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.entry_fields import PAYLOAD, PRODUCER
from email_ingestion.common.errors import LeaseLostError
from email_ingestion.common.keys import MailboxKeys
from email_ingestion.common.redis_client import Replication, redis_errors
from email_ingestion.common.text import to_text
from email_ingestion.producer.payloads import Emission

# A fenced write first checks that the mailbox's lease (ownership.py) still holds the
# caller's value; '' means unfenced (dry runs, tools, tests of the script alone).
_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
"""

# KEYS: lease, stream, state, seen. ARGV: fence, uidvalidity, last_uid, now_ms, since_ms,
# payload field name, producer field name, then per item fingerprint, uid, payload. A fenced
# entry also records the fence value (who wrote it). Items at or below the stored
# position are already in the stream; items at or below `resync_until` (a UIDVALIDITY
# re-sync still in progress) are also skipped when their fingerprint was ever emitted.
_EMIT = _FENCE + """
local stream, state, seen = KEYS[2], KEYS[3], KEYS[4]
local uidvalidity, last_uid, now_ms, since_ms = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local payload_field, producer_field = ARGV[6], ARGV[7]
local stored = redis.call('HMGET', state, 'uidvalidity', 'last_uid', 'resync_until')
local position = tonumber(stored[2] or '0')
local resync_until = tonumber(stored[3] or '0')
if stored[1] and stored[1] ~= uidvalidity then
  -- Another UIDVALIDITY without begin_resync (a racing producer saw another one): UIDs
  -- mean nothing here, so every item is checked by fingerprint.
  position, resync_until = 0, math.huge
end
local added = {}
for i = 8, #ARGV, 3 do
  local uid = tonumber(ARGV[i + 1])
  local fresh = uid > position
  if fresh and uid <= resync_until then fresh = redis.call('HEXISTS', seen, ARGV[i]) == 0 end
  if fresh then
    redis.call('HSET', seen, ARGV[i], uidvalidity .. ':' .. ARGV[i + 1])
    if ARGV[1] == '' then
      added[#added + 1] = redis.call('XADD', stream, '*', payload_field, ARGV[i + 2])
    else
      added[#added + 1] = redis.call('XADD', stream, '*', payload_field, ARGV[i + 2], producer_field, ARGV[1])
    end
  end
end
if last_uid > position then position = last_uid end
redis.call('HSET', state, 'uidvalidity', uidvalidity, 'last_uid', position, 'updated_at_ms', now_ms)
redis.call('HSETNX', state, 'since_ms', since_ms)
return added
"""

# KEYS: lease, state. ARGV: fence, new uidvalidity, resync_until, now_ms. The new
# UIDVALIDITY is stored together with the highest UID that must be checked by fingerprint,
# so an interrupted re-sync resumes as a re-sync (issue 9 §3). `since_ms`, the first run's
# baseline, stays.
_BEGIN_RESYNC = _FENCE + """
redis.call('HSET', KEYS[2], 'uidvalidity', ARGV[2], 'last_uid', 0, 'resync_until', ARGV[3],
           'updated_at_ms', ARGV[4])
return 1
"""


@dataclass(frozen=True)
class MailboxState:
    uidvalidity: int
    last_uid: int
    since_ms: int
    resync_until: int = 0  # UIDs up to here are checked by fingerprint (UIDVALIDITY re-sync)

    @property
    def resyncing(self) -> bool:
        return self.resync_until > self.last_uid


class StateStore:
    """UID state and stream writes of one mailbox. With `fence` (our lease value), every write
    is refused with LeaseLostError once the mailbox's lease holds anything else."""

    def __init__(self, *, client: redis.Redis, keys: MailboxKeys, replication: Replication = Replication(),
                 clock_ms: Clock = wall_ms, fence: str = "") -> None:
        self.redis = client
        self.keys = keys
        self.fence = fence
        self.replication = replication
        self.clock_ms = clock_ms
        self._emit = client.register_script(_EMIT)
        self._begin_resync = client.register_script(_BEGIN_RESYNC)

    def load(self) -> MailboxState | None:
        with redis_errors("state load"):
            values = self.redis.hmget(self.keys.state, "uidvalidity", "last_uid", "since_ms", "resync_until")
        if values[0] is None:
            return None
        return MailboxState(*(int(value or 0) for value in values))

    def begin_resync(self, uidvalidity: int, resync_until: int) -> MailboxState:
        """Adopt a new UIDVALIDITY: position 0, and every UID up to `resync_until` (the
        mailbox's highest now) is checked by fingerprint, across restarts."""
        with redis_errors("re-sync start"):
            done = self._begin_resync(keys=[self.keys.lease, self.keys.state],
                                      args=[self.fence, uidvalidity, resync_until, self.clock_ms()])
        self._check_fence(done)
        state = self.load()
        assert state is not None
        return state

    def emit(self, uidvalidity: int, last_uid: int, items: Sequence[Emission], since_ms: int = 0) -> list[str]:
        """Append the new items and move the position to `last_uid`, atomically.

        Returns the stream ids of the entries added (fewer than items when some were
        already emitted)."""
        args: list[str | int] = [self.fence, uidvalidity, last_uid, self.clock_ms(), since_ms, PAYLOAD, PRODUCER]
        for item in items:
            args.extend((item.fingerprint, item.uid, item.payload))
        keys = [self.keys.lease, self.keys.stream, self.keys.state, self.keys.seen]
        with redis_errors("stream append"):
            added = self._emit(keys=keys, args=args)
        self._check_fence(added)
        self.replication.wait(self.redis, self.keys.stream)  # REDIS_WAIT_REPLICAS
        return [x.decode() if isinstance(x, bytes) else str(x) for x in added]

    def _check_fence(self, reply: object) -> None:
        if reply is None:  # the script's `false`: the lease is not ours
            raise LeaseLostError(f"the lease of {self.keys.account}/{self.keys.mailbox} is no longer ours; "
                                 "nothing was written")

    def seen(self, fingerprints: Sequence[str]) -> list[bool]:
        if not fingerprints:
            return []
        with redis_errors("dedup lookup"):
            found = self.redis.hmget(self.keys.seen, list(fingerprints))
        return [value is not None for value in found]


class StreamGuard:
    """Backpressure and trimming that never lose an entry a consumer group has not acked."""

    def __init__(self, *, client: redis.Redis, stream: str, max_unacked: int) -> None:
        self.redis = client
        self.stream = stream
        self.max_unacked = max_unacked

    def unacknowledged(self) -> int:
        """Entries not yet acknowledged by the slowest group (all entries when no group)."""
        with redis_errors("stream depth check"):
            length = int(self.redis.xlen(self.stream))
            groups = self._groups()
        if not groups:
            return length
        worst = 0
        for group in groups:
            lag = group.get("lag")
            worst = max(worst, int(group.get("pending", 0)) + (length if lag is None else int(lag)))
        return min(worst, length)

    def is_full(self) -> bool:
        return self.unacknowledged() >= self.max_unacked

    def trim_acknowledged(self) -> int:
        """When the stream is longer than the limit, drop entries every group has acked."""
        with redis_errors("stream trim"):
            if int(self.redis.xlen(self.stream)) <= self.max_unacked:
                return 0
            groups = self._groups()
            if not groups:
                return 0
            ms, seq = min(self._first_unacked(group) for group in groups)
            return int(self.redis.xtrim(self.stream, minid=f"{ms}-{seq}", approximate=False))

    def _groups(self) -> list[dict[str, Any]]:
        try:
            return list(self.redis.xinfo_groups(self.stream))
        except redis.ResponseError:  # no such key yet
            return []

    def _first_unacked(self, group: dict[str, Any]) -> tuple[int, int]:
        """The oldest entry this group still needs. XINFO and XPENDING are two calls, so
        entries acked in between are fine: the answer can only be too old, never too new."""
        last = to_text(group["last-delivered-id"])
        if int(group.get("pending", 0) or 0) > 0:
            oldest = self.redis.xpending(self.stream, group["name"]).get("min")
            if oldest is not None:
                return _stream_id(to_text(oldest))
        ms, seq = _stream_id(last)
        return ms, seq + 1


def _stream_id(text: str) -> tuple[int, int]:
    # Compare ids as numbers: as strings "999-0" would sort after "1000-0".
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
