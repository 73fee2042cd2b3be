"""Recovering messages left pending by workers that died, without stealing from live ones.

Every worker keeps a heartbeat key with a TTL. Periodically (and at start-up) a worker:
- takes back its own pending entries: at start-up all of them (a previous life under the same
  consumer name, e.g. a restarted systemd instance), later those idle past CLAIM_MIN_IDLE_MS
  (delivered by an XREADGROUP or XCLAIM whose reply was lost and retried);
- claims (XCLAIM) entries pending on consumers that have no heartbeat and have been idle
  longer than CLAIM_MIN_IDLE_MS, asking each such consumer for its own entries;
- sweeps everything idle past CLAIM_HARD_LIMIT_MS, whoever holds it (a worker alive but
  wedged). XPENDING's IDLE filter walks the whole PEL in Redis, so entries past the limit are
  found wherever they are; XAUTOCLAIM from 0-0 with a small COUNT looks at the first
  COUNT*10 entries only.
The heartbeat is renewed by a thread on a connection of its own (heartbeat.py), so a read
whose reply was lost cannot make a live worker look dead; `beat` also queues a renewal in
the loop's and the settlement's pipelines.
A live worker touches the entries of the batch in hand while it renews their leases
(`touch`), so a batch of slow handlers does not age past the hard limit while it is worked on.
Claiming increments Redis's delivery counter; a message delivered MAX_DELIVERIES times
without an acknowledgement (it keeps killing its worker) is not handed out again: the
caller sends it to the DLQ.

Callers claim one message at a time (`limit=1`) and settle it before claiming the next:
a crash settles nothing, so claiming a batch would redeliver a poison message's innocent
batch-mates with it, and their delivery counters would climb to the DLQ together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.text import to_text
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.heartbeat import HeartbeatThread

log = logging.getLogger(__name__)

# KEYS: stream; ARGV: group, consumer, then entry ids. Resets the idle time of the entries
# still pending on `consumer` (XCLAIM JUSTID: the delivery counter is left alone); an entry
# another worker has taken over is not touched, so it is never taken back.
_TOUCH = """
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then args[#args + 1] = ARGV[i] end
end
if #args == 5 then return 0 end
args[#args + 1] = 'JUSTID'
return #redis.call(unpack(args))
"""


@dataclass
class Reclaimed:
    deliveries: list[Delivery] = field(default_factory=list)
    deleted: int = 0


class Recovery:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys, consumer: str, claim_min_idle_ms: int,
                 hard_limit_ms: int, heartbeat_ttl_ms: int, batch: int = 100, heartbeat_client: Any = None,
                 heartbeat_record: Callable[[], str] | None = None) -> None:
        self.redis = client
        self.stream = keys.stream
        self.group = keys.group
        self.consumer = consumer
        self.keys = keys
        self.claim_min_idle_ms = claim_min_idle_ms
        self.hard_limit_ms = hard_limit_ms
        self.heartbeat_ttl_ms = heartbeat_ttl_ms
        self.batch = batch
        self._touch = client.register_script(_TOUCH)
        self.record = heartbeat_record or (lambda: "1")
        # None (in-process tests, tools): the loop's own renewals are the only ones.
        self.heartbeat = None if heartbeat_client is None else HeartbeatThread(
            heartbeat_client, key=keys.heartbeat(consumer), ttl_ms=heartbeat_ttl_ms, record=self.record)
        # Once stop_beating() has deleted the key, no thread of ours may set it again: the
        # lease keeper of a hung call's batch still runs while the timeout path exits, and its
        # renewal landing after the DEL made the dead worker look alive for a TTL. A beat in
        # flight holds the lock, so the DEL waits for it.
        self._beat_lock = threading.Lock()
        self._stopped = False

    def touch(self, entry_ids: list[str]) -> int:
        """Reset the PEL idle time of those of `entry_ids` still pending on this consumer."""
        if not entry_ids:
            return 0
        return int(self._touch(keys=[self.stream], args=[self.group, self.consumer, *entry_ids]))

    def beat(self, pipe: Any = None) -> None:
        """Renew the heartbeat now, or queue it in `pipe`; nothing after stop_beating(). (A
        pipeline is executed by the thread that queued it: the loop, or a settlement, which
        the timeout path runs itself before it stops beating.)"""
        with self._beat_lock:
            if not self._stopped:
                (pipe or self.redis).set(self.keys.heartbeat(self.consumer), self.record(), px=self.heartbeat_ttl_ms)

    def keep_beating(self) -> None:
        """Start renewing the heartbeat on its own thread (heartbeat.py)."""
        with self._beat_lock:
            self._stopped = False
        if self.heartbeat is not None:
            self.heartbeat.start()

    def pause_beating(self) -> None:
        """Stop the renewing thread; the key lapses by its TTL."""
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def stop_beating(self) -> None:
        """Stop renewing, then delete the key: from now on this consumer looks dead (until
        keep_beating(): a loop run again in the same process)."""
        self.pause_beating()
        with self._beat_lock:
            self._stopped = True
            self.redis.delete(self.keys.heartbeat(self.consumer))

    def reclaim(self, own_idle_ms: int | None = None, limit: int | None = None) -> Reclaimed:
        """Claim up to `limit` messages left pending: this consumer's own idle past
        `own_idle_ms` (0 at start: a previous life's; CLAIM_MIN_IDLE_MS later: deliveries whose
        reply was lost), then dead consumers', then anyone's past the hard limit."""
        limit = limit or self.batch
        result = Reclaimed()
        own_idle_ms = self.claim_min_idle_ms if own_idle_ms is None else own_idle_ms
        self._claim(self._pending(own_idle_ms, limit, consumer=self.consumer), own_idle_ms, result)
        for consumer in self._dead_consumers():
            if len(result.deliveries) >= limit:
                break
            pending = self._pending(self.claim_min_idle_ms, limit - len(result.deliveries), consumer=consumer)
            orphans = [p for p in pending if p["time_since_delivered"] < self.hard_limit_ms]
            self._claim(orphans, self.claim_min_idle_ms, result)
        if len(result.deliveries) < limit:
            self._sweep(result, limit - len(result.deliveries))
        if result.deliveries or result.deleted:
            log.info("reclaimed pending messages", extra={"stream": self.stream, "claimed": len(result.deliveries),
                                                         "deleted": result.deleted})
        return result

    def _dead_consumers(self) -> list[str]:
        """Consumers with pending entries and no heartbeat. Asking each for its own pending
        entries walks the whole PEL: a live consumer's many idle entries cannot hide them."""
        consumers: Any = self.redis.xinfo_consumers(self.stream, self.group)
        holding = {to_text(c["name"]) for c in consumers if int(c["pending"])} - {self.consumer}
        return sorted(holding - self._alive(holding))

    def _pending(self, min_idle_ms: int, count: int, consumer: str | None = None) -> list[dict[str, Any]]:
        entries = self.redis.xpending_range(self.stream, self.group, min="-", max="+", count=count,
                                            consumername=consumer, idle=min_idle_ms)
        return [{**e, "message_id": to_text(e["message_id"]), "consumer": to_text(e["consumer"])} for e in entries]

    def _alive(self, consumers: set[str]) -> set[str]:
        if not consumers:
            return set()
        names = sorted(consumers)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.keys.heartbeat(name))
        return {name for name, exists in zip(names, pipe.execute(), strict=True) if exists}

    def _claim(self, pending: list[dict[str, Any]], min_idle_ms: int, result: Reclaimed) -> None:
        if not pending:
            return
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        claimed: Any = self.redis.xclaim(self.stream, self.group, self.consumer, min_idle_ms, list(counts))
        found = set()
        for entry_id, fields in claimed:
            delivery = Delivery.from_redis(entry_id, fields, counts.get(to_text(entry_id), 0) + 1)
            found.add(delivery.entry_id)
            result.deliveries.append(delivery)
        missing = [entry_id for entry_id in counts if entry_id not in found]
        if missing:
            result.deleted += self._ack_deleted(missing)

    def _ack_deleted(self, entry_ids: list[str]) -> int:
        """Of entries XCLAIM did not return, acknowledge those gone from the stream (trimmed,
        XDEL) and only those: the others were claimed a moment earlier by another consumer,
        or by this one in an XCLAIM whose reply was lost and retried. They are someone's."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xrange(self.stream, entry_id, entry_id)
        gone = [entry_id for entry_id, found in zip(entry_ids, pipe.execute(), strict=True) if not found]
        if gone:
            self.redis.xack(self.stream, self.group, *gone)
        return len(gone)

    def _sweep(self, result: Reclaimed, limit: int) -> None:
        before = len(result.deliveries)
        self._claim(self._pending(self.hard_limit_ms, limit), self.hard_limit_ms, result)
        if len(result.deliveries) > before:
            log.warning("claimed messages idle past the hard limit from a live consumer",
                        extra={"count": len(result.deliveries) - before, "hard_limit_ms": self.hard_limit_ms})
