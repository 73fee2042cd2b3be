"""Idempotency keys: a short lease while a message is handled, a done marker after.

    SET key "lease:<consumer>:<entry>" NX PX lease_ms GET  -> None: ours to handle
                                                           -> "done": handled before
                                                           -> "lease:...": someone else has it
Leases are renewed while a slow handler runs; after success the done marker (TTL
IDEMPOTENCY_TTL_SECONDS) is written and the entry acknowledged, in that order, atomically.

Each of these is one Lua call per batch rather than one command per message: redis-py's
per-command cost, not Redis, is what limits a worker's throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import redis

from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.text import to_text

DONE = "done"

# KEYS: idempotency keys; ARGV: lease ms, then one lease value per key. A lease that is
# already ours (our previous life, same consumer and entry) is taken back with a fresh TTL:
# SET NX GET alone would leave it to expire under the handler.
_ACQUIRE = """
local previous = {}
for i, key in ipairs(KEYS) do
  previous[i] = redis.call('SET', key, ARGV[i + 1], 'NX', 'PX', ARGV[1], 'GET')
  if previous[i] == ARGV[i + 1] then redis.call('PEXPIRE', key, ARGV[1]) end
end
return previous
"""

# KEYS: stream, then the idempotency keys to mark done; ARGV: group, ttl s, then entry ids
# to acknowledge (the done ones and the duplicates). Done markers first, then the ack.
_SETTLE = """
for i = 2, #KEYS do redis.call('SET', KEYS[i], 'done', 'EX', ARGV[2]) end
local acked = 0
for first = 3, #ARGV, 1000 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
return acked
"""

# Renew only leases that are still ours: a lease that expired and was taken by another
# worker must not be extended by the one that lost it.
# KEYS: idempotency keys; ARGV: lease ms, then one lease value per key.
_RENEW = """
local renewed = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed = renewed + 1
  end
end
return renewed
"""


# Compare-and-set: take each lease only if it still holds the dead holder's value.
# KEYS: idempotency keys; ARGV: lease ms, then (our value, their value) per key.
_TAKE = """
local taken = {}
for i, key in ipairs(KEYS) do
  taken[i] = 0
  if redis.call('GET', key) == ARGV[2 * i + 1] then
    redis.call('SET', key, ARGV[2 * i], 'PX', ARGV[1])
    taken[i] = 1
  end
end
return taken
"""

_RELEASE = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"""


class LeaseState(Enum):
    ACQUIRED = "acquired"
    DONE = "done"
    HELD = "held"


def lease_value(consumer: str, entry_id: str) -> str:
    return f"lease:{consumer}:{entry_id}"


class Idempotency:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys, lease_ms: int, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.lease_ms = lease_ms
        self.ttl_s = ttl_s
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take = client.register_script(_TAKE)

    def acquire(self, items: Sequence[tuple[str, str]]) -> list[LeaseState]:
        """Try to lease each (idempotency key, lease value), in one round trip. A lease
        that already carries our value (same consumer, same entry: our previous life) is
        ours again."""
        if not items:
            return []
        keys = [self.keys.idempotency(key) for key, _ in items]
        previous = self._acquire(keys=keys, args=[self.lease_ms, *[value for _, value in items]])
        states = [_state(before or None, value) for before, (_, value) in zip(previous, items, strict=True)]
        held = [i for i, state in enumerate(states) if state is LeaseState.HELD]
        for i in self._take_over_from_dead([(keys[i], items[i][1], to_text(previous[i])) for i in held]):
            states[held[i]] = LeaseState.ACQUIRED
        return states

    def _take_over_from_dead(self, held: list[tuple[str, str, str]]) -> list[int]:
        """Of (key, our value, holder's value), take the leases whose holder has no heartbeat:
        it died holding them. Deferring instead would re-add the message as a new entry and
        read its innocent batch-mates together with it again. Returns the indexes taken."""
        holders = [_holder(theirs) for _, _, theirs in held]
        if not any(holders):
            return []
        pipe = self.redis.pipeline(transaction=False)
        for holder in holders:
            pipe.exists(self.keys.heartbeat(holder or "-"))
        dead = [i for i, (holder, alive) in enumerate(zip(holders, pipe.execute(), strict=True))
                if holder and not alive]
        taken = self._take(keys=[held[i][0] for i in dead],
                           args=[self.lease_ms, *[part for i in dead for part in held[i][1:]]]) if dead else []
        return [i for i, ok in zip(dead, taken, strict=True) if ok]

    def release(self, pipe: redis.client.Pipeline, items: Sequence[tuple[str, str]]) -> None:
        """Give back leases of messages we did not get to handle (shutdown)."""
        if items:
            keys = [self.keys.idempotency(key) for key, _ in items]
            self._release(keys=keys, args=[value for _, value in items], client=pipe)

    def renew(self, items: Sequence[tuple[str, str]]) -> int:
        if not items:
            return 0
        keys = [self.keys.idempotency(key) for key, _ in items]
        return int(self._renew(keys=keys, args=[self.lease_ms, *[value for _, value in items]]))

    def confirm(self, item: tuple[str, str]) -> bool:
        """Is this lease still ours? If so it is extended by a full lease time."""
        return self.renew([item]) == 1

    def settle(self, pipe: redis.client.Pipeline, done: Sequence[str], ack_ids: Sequence[str]) -> None:
        """Mark `done` keys handled, then acknowledge `ack_ids`: one call for the batch."""
        if ack_ids:
            keys = [self.keys.stream, *[self.keys.idempotency(key) for key in done]]
            self._settle(keys=keys, args=[self.keys.group, self.ttl_s, *ack_ids], client=pipe)


def _holder(lease: str) -> str | None:
    """The consumer named in a lease value "lease:<consumer>:<entry id>"."""
    if not lease.startswith("lease:") or lease.count(":") < 2:
        return None
    return lease[len("lease:"):lease.rindex(":")]


def _state(previous: bytes | None, ours: str) -> LeaseState:
    if previous is None or previous == ours.encode():
        return LeaseState.ACQUIRED
    return LeaseState.DONE if previous == DONE.encode() else LeaseState.HELD
