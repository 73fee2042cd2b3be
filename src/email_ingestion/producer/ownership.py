"""Which producer follows which mailbox: a lease per mailbox in Redis, and a fencing token.

A producer owns a mailbox while the mailbox's lease key holds "<producer id>:<token>"
(PRODUCER_LEASE_MS, renewed every third of it). The token comes from a per-mailbox counter
that only grows, so every new owner holds a value no earlier owner ever held. The emit and
re-sync scripts (state.py) write only when the lease still holds the caller's value: a
producer paused past its lease (SIGSTOP, a long GC, a frozen VM) wakes up to refused
writes, never to a doubled or reordered stream.

Producer processes of one fleet (the same mailbox list) register in a sorted set scored by
Redis server time, each as its Instance (id, host, pid, nonce: two processes sharing an id
each count); each takes unowned mailboxes up to its fair share, ceil(mailboxes / live
producers), and gives back what is above it. A producer that cannot serve a mailbox marks
itself in the mailbox's avoid hash and stays away while another live producer may try. A dead producer's leases expire within one
lease time and its registration with them, so the survivors take its mailboxes within
about 1⅓ lease times. No home-made consensus: one key per mailbox, SET semantics and Lua,
as Redis's own lock guidance (single instance) describes; fencing covers what a lease alone
cannot (the paused holder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis

from email_ingestion.common.keys import MailboxKeys, offered_key, producers_key
from email_ingestion.common.redis_client import redis_errors
from email_ingestion.common.text import to_text
from email_ingestion.producer.instances import Instance

# The producers in `avoid` (KEYS[3]) whose mark has not run out, as a Lua table of id -> true.
# Marks are scored by Redis server time so hosts' clocks do not matter.
_AVOIDING = """
local function avoiding(key)
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local marks = redis.call('HGETALL', key)
  local found = {}
  for i = 1, #marks, 2 do
    if tonumber(marks[i + 1]) > now_ms then found[marks[i]] = true else redis.call('HDEL', key, marks[i]) end
  end
  return found, now_ms
end
-- Is any live producer (ARGV[from..]) other than `me` free to try?
local function another_may_try(found, me, from)
  for i = from, #ARGV do
    if ARGV[i] ~= me and not found[ARGV[i]] then return true end
  end
  return false
end
"""

# KEYS: lease, token counter, avoid; ARGV: producer id, lease ms, "1" to take back our own,
# our instance, then the live instances. Free, or (with ARGV[3]) ours from an earlier life of this producer
# id (a restart after SIGKILL): take it with a fresh token, which also fences that earlier
# life should it still run. Held by another, or we could not serve it lately and another
# live producer may try: false.
_ACQUIRE = _AVOIDING + """
local current = redis.call('GET', KEYS[1])
if current and (ARGV[3] ~= '1' or string.match(current, '^(.*):%d+$') ~= ARGV[1]) then return false end
local found = avoiding(KEYS[3])
if found[ARGV[4]] and another_may_try(found, ARGV[4], 5) then return false end
local value = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""

# KEYS: avoid; ARGV: our instance, mark ms, then the live instances. Marks us for mark ms;
# 1 when another live producer may try the mailbox (then give it back), else 0 (keep it:
# every live producer failed it lately, so it would only go round).
_AVOID = _AVOIDING + """
local found, now_ms = avoiding(KEYS[1])
if not another_may_try(found, ARGV[1], 3) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now_ms + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease; ARGV: our value, lease ms.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: the mailbox's token counter now and in an earlier layout, then its history keys now,
# then the same history keys in the earlier layout. Only a mailbox with no history yet adopts
# the earlier one, key by key, so a position is never overwritten and nothing is merged. The
# earlier counter is added to the current one: tokens handed out later stay above all before.
_ADOPT = """
local n = (#KEYS - 2) / 2
local old_tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
if old_tokens > 0 then
  redis.call('INCRBY', KEYS[1], old_tokens)
  redis.call('DEL', KEYS[2])
end
for i = 3, 2 + n do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
local moved = 0
for i = 3, 2 + n do
  if redis.call('EXISTS', KEYS[n + i]) == 1 then
    redis.call('RENAME', KEYS[n + i], KEYS[i])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: registry; ARGV: producer id, ttl ms. Returns the live producer ids.
_REGISTER = """
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


# KEYS: offers; ARGV: mailbox, lease ms. Offers older than a day are dropped: a mailbox
# nobody took for that long is not waiting for a taker.
_OFFER = """
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - 86400000)
return 1
"""


def fair_share(mailboxes: int, live_producers: int) -> int:
    return math.ceil(mailboxes / max(1, live_producers))


class Ownership:
    """Lease calls of one producer. Every method is one round trip; Redis errors surface as
    RedisUnavailableError (redis_errors)."""

    def __init__(self, client: redis.Redis, *, producer_id: str, fleet: str, lease_ms: int) -> None:
        self.redis = client
        self.producer_id = producer_id
        self.instance = Instance.of_this_process(producer_id)
        self.registry = producers_key(fleet)
        self.offers = offered_key(fleet)
        self.lease_ms = lease_ms
        # False while another live process uses our id (it registered, or took a lease from
        # us): leases under our id are then that process's, not an earlier life of ours.
        self.take_back_own = True
        self._taken_by_our_id = False
        self._acquire = client.register_script(_ACQUIRE)
        self._avoid = client.register_script(_AVOID)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._register = client.register_script(_REGISTER)
        self._offer = client.register_script(_OFFER)
        self._adopt = client.register_script(_ADOPT)

    @property
    def renew_interval_s(self) -> float:
        return self.lease_ms / 3 / 1000

    def register(self) -> list[str]:
        """Announce this process for one lease time; the live producer processes of the
        fleet. Processes, not ids: two sharing a PRODUCER_ID (two on one host without one)
        each count, and each gets its share instead of one taking everything."""
        with redis_errors("producer registration"):
            live = [to_text(m) for m in self._register(keys=[self.registry], args=[str(self.instance), self.lease_ms])]
        sharing = [i for i in map(Instance.parse, live) if i and self.instance.shares_id_with(i)]
        self.take_back_own = not (self._taken_by_our_id or sharing)
        return live

    def unregister(self) -> None:
        with redis_errors("producer deregistration"):
            self.redis.zrem(self.registry, str(self.instance))

    def acquire(self, keys: MailboxKeys, *, live: Sequence[str] = ()) -> str | None:
        """Our lease value (the fencing token) when the mailbox is now ours, else None. Not
        while we stay away from it (avoid) and one of the `live` producers may try it."""
        with redis_errors("mailbox lease"):
            value = self._acquire(keys=[keys.lease, keys.lease_token, keys.avoid],
                                  args=[self.producer_id, self.lease_ms, "1" if self.take_back_own else "0",
                                        str(self.instance), *live])
        return to_text(value) if value else None

    def avoid(self, keys: MailboxKeys, *, live: Sequence[str], mark_ms: int) -> bool:
        """We cannot serve the mailbox: stay away from it for `mark_ms` if another of the
        `live` producers may try it (True: give it back), else keep it (False)."""
        with redis_errors("mailbox avoid mark"):
            return bool(int(self._avoid(keys=[keys.avoid], args=[str(self.instance), mark_ms, *live])))

    def renew(self, leases: Sequence[tuple[MailboxKeys, str]]) -> list[bool]:
        """For each (keys, our value): is it still ours (and now extended)?"""
        if not leases:
            return []
        with redis_errors("mailbox lease renewal"):
            # One script call per key: in a cluster the mailboxes' leases live on different slots.
            pipe = self.redis.pipeline(transaction=False)
            for keys, value in leases:
                self._renew(keys=[keys.lease], args=[value, self.lease_ms], client=pipe)
            return [bool(int(ok)) for ok in pipe.execute()]

    def release(self, keys: MailboxKeys, value: str) -> None:
        with redis_errors("mailbox lease release"):
            self._release(keys=[keys.lease], args=[value])

    def adopt(self, keys: MailboxKeys, earlier: Sequence[MailboxKeys]) -> int:
        """Move the mailbox's history (position, fingerprints, token counter) from where an
        earlier version kept it (another spelling of the folder, the key layout before the
        stream's name was part of it), if it has none yet; how many keys moved. Call it
        holding the lease: only the owner may move a position."""
        moved = 0
        with redis_errors("adopting the mailbox's earlier keys"):
            for old in earlier:  # same hash tag: one slot, one script call each
                moved += int(self._adopt(keys=[keys.lease_token, old.lease_token, *keys.history(),
                                               *old.history()]))
        return moved

    def offer(self, mailbox: str) -> None:
        """Tell the fleet we gave `mailbox` (Mailbox.key) back because we cannot serve it."""
        with redis_errors("offering a mailbox"):
            self._offer(keys=[self.offers], args=[mailbox, self.lease_ms])

    def offered(self) -> list[str]:
        """Mailboxes given back by producers that could not serve them (offer)."""
        with redis_errors("reading offered mailboxes"):
            return [to_text(m) for m in self.redis.zrange(self.offers, 0, -1)]

    def withdraw(self, mailbox: str) -> None:
        """`mailbox` is followed again: no longer on offer."""
        with redis_errors("withdrawing an offer"):
            self.redis.zrem(self.offers, mailbox)

    def is_our_id(self, lease: str | None) -> bool:
        return bool(lease) and str(lease).rsplit(":", 1)[0] == self.producer_id

    def lost(self, keys: MailboxKeys) -> bool:
        """A lease of ours was found taken. True the first time it was taken under our own id:
        another live process uses our PRODUCER_ID (a hand-run `--once` beside the service,
        two services sharing a host name); from then on leases under our id are that
        process's, not an earlier life of ours to take back, or the two would fence each
        other in turn."""
        if self._taken_by_our_id or not self.is_our_id(self.holder(keys)):
            return False
        self._taken_by_our_id, self.take_back_own = True, False
        return True

    def holder(self, keys: MailboxKeys) -> str | None:
        """The value the mailbox's lease holds now (None: free)."""
        with redis_errors("mailbox lease lookup"):
            value = self.redis.get(keys.lease)
        return to_text(value) if value else None
