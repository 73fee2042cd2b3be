"""The settle step: land a batch's settlement in one MULTI (heartbeat first, then the retry,
DLQ and release scripts, done markers and acks), then WAIT for replicas when
REDIS_WAIT_REPLICAS asks for it.

The settlement is kept as data until it has landed: when Redis is down, restarting,
loading or full at that moment, it is replayed once Redis serves again, before anything
new is read, so a handled message is not handled again (every settling script tolerates a
replay). A batch is settled at least every WORKER_SETTLE_INTERVAL_MS or
WORKER_SETTLE_MAX_MESSAGES handled messages, whichever comes first: what a frozen or
killed worker had handled but not settled is bounded by them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from email_ingestion.common.redis_client import Replication
from email_ingestion.common.text import to_text
from email_ingestion.worker.batch import Settlement
from email_ingestion.worker.idempotency import Idempotency
from email_ingestion.worker.redis_wait import WAIT_ERRORS, RedisWait

log = logging.getLogger("email_ingestion.worker.processor")

# While a settlement waits for Redis, it is retried at least this often: once Redis serves
# again, the worker that handled the batch should land its outcomes before anyone else
# finds the messages idle and takes them over.
SETTLE_RETRY_MAX_S = 1.0


class Settler:
    def __init__(self, client: redis.Redis, *, idempotency: Idempotency, heartbeat: Callable[..., None],
                 redis_wait: RedisWait, replication: Replication = Replication()) -> None:
        self.redis = client
        self.idempotency = idempotency
        self.heartbeat = heartbeat  # heartbeat(pipe): queued first in the MULTI
        self.redis_wait = redis_wait
        self.replication = replication

    def settle(self, batch: Settlement, out_of_time: Callable[[], bool]) -> None:
        """Land the settlement, waiting out Redis; then start the batch's next one afresh."""
        self.redis_wait.call(lambda: self._execute(batch, wait_replicas=True), "settling a batch",
                             give_up=out_of_time, max_delay_s=SETTLE_RETRY_MAX_S)
        batch.clear()

    def settle_before_exit(self, batch: Settlement, within_s: float) -> bool:
        """The timeout path: try to land the settlement for `within_s`, whatever Redis
        answers; True if it landed. Never raises: the process exits next either way."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                self._execute(batch, wait_replicas=False)
            except Exception as exc:  # noqa: BLE001 - any failure here must still end in the exit
                if time.monotonic() >= deadline:
                    log.error("could not settle the timed-out batch; its messages stay pending",
                              extra={"error": type(exc).__name__})
                    return False
                time.sleep(SETTLE_RETRY_MAX_S)
                continue
            self._wait_replicas_once()
            return True

    def _wait_replicas_once(self) -> None:
        """The settlement landed on the primary; a replica shortfall now is worth a warning,
        not a hang (issue 19 item 12): a failover could lose it, as for any write."""
        try:
            self.replication.wait(self.redis, self.idempotency.keys.stream)
        except WAIT_ERRORS as exc:
            log.warning("timed-out batch settled on the primary only", extra={"error": str(exc)})

    def _execute(self, batch: Settlement, *, wait_replicas: bool) -> None:
        pipe = self.redis.pipeline(transaction=True)
        # First, the heartbeat: after a long outage this replay must show us alive before
        # anyone takes the batch's messages over as a dead worker's.
        self.heartbeat(pipe)
        starts = []  # where each action's replies begin in the MULTI's answer
        for action in batch.actions:
            starts.append(len(pipe))
            action(pipe)
        self.idempotency.settle(pipe, batch.done_keys, batch.ack_ids)
        replies = pipe.execute()
        _log_dead_letters(batch, [replies[i] for i in starts])
        if wait_replicas:
            self.replication.wait(self.redis, self.idempotency.keys.stream)  # REDIS_WAIT_REPLICAS


def _log_dead_letters(batch: Settlement, first_replies: list[object]) -> None:
    """One line per letter that landed, naming its DLQ id and the original stream id."""
    for note in batch.dead_letters:
        dlq_id = first_replies[note.action_index]
        if not dlq_id:
            continue  # a replayed settlement: this letter had landed already (and was logged)
        log.error("message moved to the dead-letter queue", extra={
            "dlq_id": to_text(dlq_id), "stream_id": note.stream_id, "original_id": note.original_id,
            "reason": note.reason, "error_type": note.error_type})


class SettleCadence:
    """When a batch in progress settles what it has done so far."""

    def __init__(self, *, interval_ms: int, max_messages: int) -> None:
        self.interval_s = interval_ms / 1000
        self.max_messages = max_messages
        self._since = time.monotonic()
        self._handled = 0

    def restart(self) -> None:
        self._since = time.monotonic()
        self._handled = 0

    def handled(self) -> bool:
        """Count one handled message; True when the settlement is due."""
        self._handled += 1
        return self._handled >= self.max_messages or time.monotonic() - self._since >= self.interval_s
