"""Building the Redis client from settings, and mapping its failures onto ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from email_ingestion.common.errors import RedisUnavailableError
from email_ingestion.common.settings import RedisSettings

# What redis-py raises when the server is down, restarting, loading its dataset or
# read-only after a failover: all of them pass by themselves.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
)


def make_redis(settings: RedisSettings) -> redis.Redis:
    common: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.socket_timeout_seconds,
        "health_check_interval": 30,
        # The same transparent retries whether REDIS_URL or host/port is set (redis-py's
        # defaults differ): a reply lost on a dropped connection is retried on a new one.
        # Every worker script tolerates running twice, and what a retried XREADGROUP or
        # XCLAIM delivers twice stays pending on this consumer until it re-reads it.
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
    }
    if settings.url:
        return redis.Redis.from_url(settings.url, **common)
    return redis.Redis(
        host=settings.host, port=settings.port, db=settings.db, username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None, **common,
    )


def describe(settings: RedisSettings) -> str:
    """Where Redis is, without credentials, for log lines."""
    if settings.url:
        tail = settings.url.split("@", 1)[-1]
        return tail if "://" in tail else f"redis://{tail}"
    return f"redis://{settings.host}:{settings.port}/{settings.db}"


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """The one boundary between redis-py's errors and ours: what passes by itself
    becomes RedisUnavailableError, naming what was being done; the rest propagates."""
    try:
        yield
    except TRANSIENT_ERRORS as exc:
        raise RedisUnavailableError(f"Redis unavailable during {where}: {type(exc).__name__}: {exc}") from exc
