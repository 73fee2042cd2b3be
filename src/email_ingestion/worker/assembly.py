"""Wiring one stream's batch processor from its parts (processor.py lists them)."""

from __future__ import annotations

import redis

from email_ingestion.common.clock import Clock
from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.redis_client import Replication
from email_ingestion.common.settings import Settings
from email_ingestion.monitoring.metrics import WorkerMetrics
from email_ingestion.worker.admission import Admission
from email_ingestion.worker.backoff import Backoff
from email_ingestion.worker.call import HandlerCall
from email_ingestion.worker.dead_letter import DeadLetterQueue
from email_ingestion.worker.deadline import Deadline
from email_ingestion.worker.handlers import Handler
from email_ingestion.worker.idempotency import Idempotency
from email_ingestion.worker.kernel_timer import KernelTimer
from email_ingestion.worker.leasing import Leasing
from email_ingestion.worker.outcomes import Outcomes
from email_ingestion.worker.processor import BatchProcessor
from email_ingestion.worker.recovery import Recovery
from email_ingestion.worker.redis_wait import RedisWait
from email_ingestion.worker.retries import RetrySchedule
from email_ingestion.worker.settle import Settler
from email_ingestion.worker.timeout_exit import TimeoutExit
from email_ingestion.worker.timings import ProcessorTimings


def build_processor(client: redis.Redis, *, settings: Settings, keys: StreamKeys, consumer: str, handler: Handler,
                    retries: RetrySchedule, recovery: Recovery, metrics: WorkerMetrics, redis_wait: RedisWait,
                    timer: KernelTimer, clock_ms: Clock) -> BatchProcessor:
    retry = settings.retry
    idempotency = Idempotency(client, keys=keys, lease_ms=retry.lease_ms, ttl_s=retry.idempotency_ttl_seconds)
    outcomes = Outcomes(consumer=consumer, idempotency=idempotency, retries=retries,
                        dlq=DeadLetterQueue(client, keys=keys, clock_ms=clock_ms),
                        backoff=Backoff(retry.retry_base_seconds, retry.retry_factor, retry.retry_cap_seconds,
                                        retry.max_retries), clock_ms=clock_ms)
    settler = Settler(client, idempotency=idempotency, heartbeat=recovery.beat, redis_wait=redis_wait,
                      replication=Replication.from_settings(settings.redis))
    return BatchProcessor(
        admission=Admission(consumer=consumer, max_deliveries=retry.max_deliveries, outcomes=outcomes),
        leasing=Leasing(idempotency=idempotency, outcomes=outcomes),
        call=HandlerCall(handler=handler, consumer=consumer), outcomes=outcomes,
        settler=settler, deadline=Deadline(timeout_s=retry.handler_timeout_seconds, timer=timer),
        timeout_exit=TimeoutExit(outcomes=outcomes, settler=settler, recovery=recovery,
                                 handler_timeout_s=retry.handler_timeout_seconds), recovery=recovery,
        metrics=metrics, timings=ProcessorTimings.from_settings(settings.worker, retry), clock_ms=clock_ms)
