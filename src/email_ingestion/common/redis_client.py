"""Building the Redis client from settings, and mapping its failures onto ours."""

from __future__ import annotations

import redis

from email_ingestion.common.errors import RedisUnavailableError
from email_ingestion.common.settings import RedisSettings

# What redis-py raises when the server is down, restarting, loading its dataset or
# read-only after a failover: all of them pass by themselves.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
)


def make_redis(settings: RedisSettings) -> redis.Redis:
    common = {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.socket_timeout_seconds,
        "health_check_interval": 30,
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


def unavailable(exc: BaseException, settings: RedisSettings) -> RedisUnavailableError:
    return RedisUnavailableError(f"Redis at {describe(settings)} unavailable: {type(exc).__name__}: {exc}")
