"""Recovering messages left pending by workers that died, without stealing from live ones.

Every worker keeps a heartbeat key with a TTL. Periodically (and at start-up) a worker:
- takes back its own pending entries from a previous life (same consumer name, e.g. a
  systemd instance that was restarted);
- claims (XCLAIM) entries pending on consumers that have no heartbeat and have been idle
  longer than CLAIM_MIN_IDLE_MS;
- sweeps with XAUTOCLAIM everything idle past CLAIM_HARD_LIMIT_MS, whoever holds it (a
  worker alive but wedged), which also reports entries deleted from the stream meanwhile.
Claiming increments Redis's delivery counter; a message delivered MAX_DELIVERIES times
without an acknowledgement (it keeps killing its worker) is not handed out again: the
caller sends it to the DLQ.

Callers claim one message at a time (`limit=1`) and settle it before claiming the next:
a crash settles nothing, so claiming a batch would redeliver a poison message's innocent
batch-mates with it, and their delivery counters would climb to the DLQ together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.text import to_text
from email_ingestion.worker.delivery import Delivery

log = logging.getLogger(__name__)


@dataclass
class Reclaimed:
    deliveries: list[Delivery] = field(default_factory=list)
    deleted: int = 0


class Recovery:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys, consumer: str, claim_min_idle_ms: int,
                 hard_limit_ms: int, heartbeat_ttl_ms: int, batch: int = 100) -> None:
        self.redis = client
        self.stream = keys.stream
        self.group = keys.group
        self.consumer = consumer
        self.keys = keys
        self.claim_min_idle_ms = claim_min_idle_ms
        self.hard_limit_ms = hard_limit_ms
        self.heartbeat_ttl_ms = heartbeat_ttl_ms
        self.batch = batch

    def beat(self, pipe: Any = None) -> None:
        (pipe or self.redis).set(self.keys.heartbeat(self.consumer), "1", px=self.heartbeat_ttl_ms)

    def stop_beating(self) -> None:
        self.redis.delete(self.keys.heartbeat(self.consumer))

    def reclaim(self, own: bool = False, limit: int | None = None) -> Reclaimed:
        """Claim up to `limit` messages that dead (or, past the hard limit, wedged)
        consumers left pending; with `own`, first those of this consumer's previous life."""
        limit = limit or self.batch
        result = Reclaimed()
        if own:
            self._claim(self._pending(0, limit, consumer=self.consumer), 0, result)
        if len(result.deliveries) < limit:
            pending = self._pending(self.claim_min_idle_ms, self.batch)
            alive = self._alive({p["consumer"] for p in pending} - {self.consumer})
            orphans = [p for p in pending if p["consumer"] != self.consumer and p["consumer"] not in alive
                       and p["time_since_delivered"] < self.hard_limit_ms]
            self._claim(orphans[:limit - len(result.deliveries)], self.claim_min_idle_ms, result)
        if len(result.deliveries) < limit:
            self._sweep(result, limit - len(result.deliveries))
        if result.deliveries or result.deleted:
            log.info("reclaimed pending messages", extra={"claimed": len(result.deliveries), "deleted": result.deleted})
        return result

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
        gone = [entry_id for entry_id in counts if entry_id not in found]
        if gone:
            # Deleted from the stream (trimmed, XDEL) while pending: nothing left to deliver.
            self.redis.xack(self.stream, self.group, *gone)
            result.deleted += len(gone)

    def _sweep(self, result: Reclaimed, limit: int) -> None:
        reply = self.redis.xautoclaim(self.stream, self.group, self.consumer, self.hard_limit_ms,
                                      start_id="0-0", count=limit)
        claimed, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
        result.deleted += len(deleted)
        if not claimed:
            return
        ids = [to_text(entry_id) for entry_id, _ in claimed]
        counts = {to_text(p["message_id"]): int(p["times_delivered"]) for p in self.redis.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) * 2, consumername=self.consumer)}
        for entry_id, fields in claimed:
            if fields:
                result.deliveries.append(Delivery.from_redis(entry_id, fields, counts.get(to_text(entry_id), 1)))
        log.warning("claimed messages idle past the hard limit from a live consumer",
                    extra={"count": len(claimed), "hard_limit_ms": self.hard_limit_ms})
