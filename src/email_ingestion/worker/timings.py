"""The worker's time budget: how often it renews what keeps it visible, and the ratios
between heartbeat, lease, block timeout, handler timeout and hard limit that must hold.

Everything a live worker keeps alive (its heartbeat, the leases of its batch) has a TTL; it
renews each at most a third of the way through the shortest of them, so two renewals can
be late before anything expires. Settings that break a ratio are refused at start.
"""

from __future__ import annotations

from dataclasses import dataclass

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.settings import HealthSettings, RedisSettings, RetrySettings, WorkerSettings

MIN_RENEW_INTERVAL_S = 0.05
# A blocked XREADGROUP must come back before the socket gives up on it, with room for a
# slow reply: otherwise every idle read ends in a TimeoutError and a reconnect.
BLOCK_REPLY_MARGIN_MS = 1000


@dataclass(frozen=True, kw_only=True)
class ProcessorTimings:
    """What a batch processor needs to know about time."""

    lease_ms: int
    renew_interval_s: float
    handler_timeout_s: float
    heartbeat_ttl_ms: int
    settle_interval_ms: int = 1000
    settle_max_messages: int = 500

    @classmethod
    def from_settings(cls, worker: WorkerSettings, retry: RetrySettings) -> ProcessorTimings:
        return cls(lease_ms=retry.lease_ms, renew_interval_s=renew_interval_s(retry),
                   handler_timeout_s=retry.handler_timeout_seconds, heartbeat_ttl_ms=retry.heartbeat_ttl_ms,
                   settle_interval_ms=worker.settle_interval_ms, settle_max_messages=worker.settle_max_messages)

    @property
    def fresh_s(self) -> float:
        """How long after a confirmation no lease of the batch can be another worker's:
        others may take a lease over once our heartbeat is gone, before the lease expires,
        so ownership is sure for the shorter of the two, minus a margin."""
        ownership_ms = min(self.lease_ms, self.heartbeat_ttl_ms)
        return (ownership_ms - lease_margin_ms(ownership_ms)) / 1000


def renew_interval_s(retry: RetrySettings) -> float:
    """How often the lease renewer renews the batch's leases and the heartbeat."""
    return max(min(retry.lease_ms, retry.heartbeat_ttl_ms) / 3000, MIN_RENEW_INTERVAL_S)


def lease_margin_ms(lease_ms: int) -> int:
    """A lease confirmed longer ago than lease_ms minus this may have expired: re-check it."""
    return lease_ms // 3


def check(worker: WorkerSettings, retry: RetrySettings, health: HealthSettings,
          redis_settings: RedisSettings | None = None) -> None:
    """Raise SettingsError naming the first ratio the settings break."""
    for broken, message in [*_rules(worker, retry, health), *_socket_rules(worker, redis_settings)]:
        if broken:
            raise SettingsError(message)


def _rules(worker: WorkerSettings, retry: RetrySettings, health: HealthSettings) -> list[tuple[bool, str]]:
    handler_ms = int(retry.handler_timeout_seconds * 1000)
    return [
        (worker.block_timeout_ms * 3 > retry.heartbeat_ttl_ms,
         f"WORKER_BLOCK_TIMEOUT_MS={worker.block_timeout_ms} must be at most a third of "
         f"HEARTBEAT_TTL_MS={retry.heartbeat_ttl_ms}: the loop renews its heartbeat once per read"),
        (health.stall_seconds * 1000 <= handler_ms,
         f"HEALTH_STALL_SECONDS={health.stall_seconds:g} must exceed HANDLER_TIMEOUT_SECONDS="
         f"{retry.handler_timeout_seconds:g}: /health would fail a healthy handler before its timeout"),
        (handler_ms + retry.lease_ms >= retry.claim_hard_limit_ms,
         f"CLAIM_HARD_LIMIT_MS={retry.claim_hard_limit_ms} must exceed HANDLER_TIMEOUT_SECONDS plus "
         f"LEASE_MS ({handler_ms + retry.lease_ms} ms): the sweep would take messages from handlers still running"),
    ]


def _socket_rules(worker: WorkerSettings, redis_settings: RedisSettings | None) -> list[tuple[bool, str]]:
    if redis_settings is None:
        return []
    socket_ms = int(redis_settings.socket_timeout_seconds * 1000)
    return [
        (worker.block_timeout_ms + BLOCK_REPLY_MARGIN_MS > socket_ms,
         f"WORKER_BLOCK_TIMEOUT_MS={worker.block_timeout_ms} must be at least {BLOCK_REPLY_MARGIN_MS} ms below "
         f"REDIS_SOCKET_TIMEOUT_SECONDS={redis_settings.socket_timeout_seconds:g}: "
         "a blocked read would time out at the socket"),
    ]
