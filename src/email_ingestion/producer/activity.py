"""What a producer is doing with a mailbox, written to Redis for the console's overview.

States: syncing (a pass is running; its done/total figures are the progress key's,
keys.MailboxKeys.progress), idle (caught up, waiting for mail), backing off (a transient
failure; `detail` names its class, never the server's text, which may quote mail), quota
(the server throttled us), credentials (refused: a person must act).
Best effort: a Redis error here is logged at debug and never stops a sync; the next
transition writes again. The hash lives ACTIVITY_TTL_S after its last write, so a producer
that died leaves no state behind for long (the console also shows the lease's owner).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import redis

from email_ingestion.common.keys import MailboxKeys

log = logging.getLogger(__name__)

State = Literal["syncing", "idle", "backing off", "quota", "credentials"]
ACTIVITY_TTL_S = 24 * 3600


class Activity:
    def __init__(self, client: redis.Redis | None, keys: MailboxKeys | None, *, producer_id: str) -> None:
        self.redis = client  # None: record nothing (dry runs, tests)
        self.key = keys.activity if keys else ""
        self.producer_id = producer_id

    def state(self, state: State, detail: str = "") -> None:
        self._write({"state": state, "detail": detail[:200]})

    def _write(self, fields: dict[str, str | int]) -> None:
        if self.redis is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            mapping: dict[Any, Any] = {**fields, "producer": self.producer_id}
            pipe.hset(self.key, mapping=mapping)
            pipe.pexpire(self.key, ACTIVITY_TTL_S * 1000)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("activity not recorded", extra={"error": type(exc).__name__})


def no_activity() -> Activity:
    return Activity(None, None, producer_id="")
