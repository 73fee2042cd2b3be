"""Live workers, counted from their heartbeat keys.

Not from XINFO CONSUMERS: Redis 7.0 does not list a consumer blocked in XREADGROUP before it
has received its first message, so a fresh, idle install looked like "no workers" and
EmailNoActiveWorkers fired falsely (issue 11). Every worker keeps `hb:<consumer>` alive with
a TTL (common/keys.py StreamKeys.heartbeat) from its first moment, so the keys are the truth.
They are found with SCAN MATCH, whose cost grows with the whole keyspace: one round trip per
1,000 keys, done markers included (one per message for IDEMPOTENCY_TTL_SECONDS). That is a
few milliseconds for tens of thousands of keys, 0.45 s per scrape with 500,000 (measured on
the 2-core development machine); an index (a sorted set the heartbeat also writes, scored by
expiry) would make it O(workers).
"""

from __future__ import annotations

import re

import redis

from email_ingestion.common.keys import StreamKeys

SCAN_COUNT = 1000


def glob_escape(text: str) -> str:
    """`text` matched literally by SCAN MATCH (stream names may hold * ? [ ])."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def unescape(part: str) -> str:
    """Inverse of common/keys.py's escaping of account, mailbox and consumer names."""
    return part.replace("%3A", ":").replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


def live_workers(client: redis.Redis, keys: StreamKeys) -> dict[str, int]:
    """Consumer name -> milliseconds its heartbeat has left, for every live worker."""
    prefix = keys.heartbeat("")
    found = [key for key in client.scan_iter(match=glob_escape(prefix) + "*", count=SCAN_COUNT)]
    if not found:
        return {}
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.pttl(key)
    alive = {}
    for key, ttl_ms in zip(found, pipe.execute(), strict=True):
        name = (key.decode() if isinstance(key, bytes) else str(key))[len(prefix):]
        if int(ttl_ms) != -2:  # -2: expired between SCAN and PTTL
            alive[unescape(name)] = int(ttl_ms)
    return alive
