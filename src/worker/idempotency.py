"""Idempotency keys: a short lease while a message is handled, a done marker after.

    SET key "lease:<consumer>:<entry>" NX PX lease_ms GET  -> None: ours to handle
                                                           -> "done": handled before
                                                           -> "lease:...": someone else has it
Leases are renewed while a slow handler runs; after success the done marker (TTL
IDEMPOTENCY_TTL_SECONDS) is written and the entry acknowledged in one MULTI.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import redis

from src.common.keys import StreamKeys

DONE = "done"

# Renew only leases that are still ours: a lease that expired and was taken by another
# worker must not be extended by the one that lost it.
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
    def __init__(self, client: redis.Redis, keys: StreamKeys, lease_ms: int, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.lease_ms = lease_ms
        self.ttl_s = ttl_s
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self, items: Sequence[tuple[str, str]]) -> list[LeaseState]:
        """Try to lease each (idempotency key, lease value), in one round trip. A lease
        that already carries our value (same consumer, same entry: our previous life) is
        ours again."""
        if not items:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key, value in items:
            pipe.set(self.keys.idempotency(key), value, nx=True, px=self.lease_ms, get=True)
        return [_state(previous, value) for previous, (_, value) in zip(pipe.execute(), items)]

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

    def mark_done(self, pipe: redis.client.Pipeline, key: str) -> None:
        pipe.set(self.keys.idempotency(key), DONE, ex=self.ttl_s)


def _state(previous: bytes | None, ours: str) -> LeaseState:
    if previous is None or previous == ours.encode():
        return LeaseState.ACQUIRED
    return LeaseState.DONE if previous == DONE.encode() else LeaseState.HELD
