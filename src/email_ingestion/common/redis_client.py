"""Building the Redis client from settings, and mapping its failures onto ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from email_ingestion.common.errors import RedisAuthError, RedisPermissionError, RedisUnavailableError, SettingsError
from email_ingestion.common.settings import RedisSettings

# What redis-py raises when the server is down, restarting, loading its dataset, read-only
# after a failover or out of memory until workers acknowledge and trimming frees some: all
# of them pass by themselves. AuthenticationError is a ConnectionError too, but it does not
# pass: redis_errors() tells it apart first.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)
URL_SHAPE = "redis://[[user]:password@]host[:port][/db] (or rediss://, unix://)"


def make_redis(settings: RedisSettings) -> redis.Redis:
    common: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.socket_timeout_seconds,
        "health_check_interval": 30,
    }
    if settings.url:
        try:
            return redis.Redis.from_url(settings.url, **common)
        except ValueError as exc:
            # The URL is not echoed: it may hold the password.
            raise SettingsError(f"invalid setting REDIS_URL: {_url_problem(exc)}; expected {URL_SHAPE}") from None
    return redis.Redis(
        host=settings.host, port=settings.port, db=settings.db, username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None, **common,
    )


def _url_problem(exc: ValueError) -> str:
    text = str(exc)
    return text.split(":", 1)[0] if "://" in text or "@" in text else text


def describe(settings: RedisSettings) -> str:
    """Where Redis is, without credentials, for log lines."""
    if settings.url:
        return redact_url(settings.url)
    return f"redis://{settings.host}:{settings.port}/{settings.db}"


def redact_url(url: str) -> str:
    """The URL without its userinfo. The authority ends at the first "/" after "://"; its
    userinfo ends at the LAST "@" in it, since an unencoded "@" in a password is common."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "redis", url
    authority, slash, path = rest.partition("/")
    host = authority.rsplit("@", 1)[-1]
    return f"{scheme}://{host}{slash}{path}"


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """The one boundary between redis-py's errors and ours: what passes by itself
    becomes RedisUnavailableError, naming what was being done; the rest propagates."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise RedisAuthError(f"Redis refused the credentials during {where}: check REDIS_URL / REDIS_PASSWORD "
                             f"({type(exc).__name__})") from None
    except redis.exceptions.NoPermissionError as exc:
        raise RedisPermissionError(f"Redis ACL refused a command during {where}: {exc}; "
                                   "see config/users.acl.example") from None
    except TRANSIENT_ERRORS as exc:
        raise RedisUnavailableError(f"Redis unavailable during {where}: {type(exc).__name__}: {exc}") from exc
