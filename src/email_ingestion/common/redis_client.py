"""Building the Redis client from settings, and mapping its failures onto ours.

`make_redis` is the one place a component gets its client, whatever the topology: one
server (`REDIS_URL` or host/port), a master found through Sentinel (`REDIS_SENTINELS`), or
a Redis Cluster (`REDIS_CLUSTER=true`, `REDIS_URL` naming any node); TLS for each of them.
`redis_errors` is the one boundary between redis-py's exceptions and ours.
"""

from __future__ import annotations

import contextlib
import enum
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.cluster
import redis.exceptions
import redis.sentinel
from redis.backoff import ExponentialBackoff

from email_ingestion.common.clock import wall_ms
from email_ingestion.common.errors import (
    RedisAuthError,
    RedisPermissionError,
    RedisTlsError,
    RedisUnavailableError,
    SettingsError,
)
from email_ingestion.common.keys import wait_marker
from email_ingestion.common.redis_retry import LoggedRetry
from email_ingestion.common.settings import RedisSettings, sentinel_addresses

# What redis-py raises when the server is down, restarting, loading its dataset, read-only
# after a failover, out of memory until workers acknowledge and trimming frees some, when
# Sentinel has no master yet (MasterNotFoundError is a ConnectionError), or while a cluster
# reshards or fails over: all of them pass by themselves. MOVED and ASK never get here:
# RedisCluster follows them. AuthenticationError is a ConnectionError too, but it does not
# pass: classify() tells it apart first.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.sentinel.MasterNotFoundError, redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError, redis.exceptions.SlotNotCoveredError,
)

# Error replies that say "not now" rather than "never": redis-py raises most of them as a
# plain ResponseError, and inside a pipeline, a MULTI (EXECABORT) or a script the code is
# quoted further into the text, so it is looked for as a word anywhere in the reply.
#   LOADING      a restarted server is reading its dataset
#   READONLY     a replica after a failover, until the client finds the new master
#   OOM          maxmemory reached, until workers acknowledge and trimming frees room
#   MISCONF      a background save failed and stop-writes-on-bgsave-error is on
#   NOREPLICAS   min-replicas-to-write not met for now
#   BUSY         a script or function runs past busy-reply-threshold
#   TRYAGAIN, CLUSTERDOWN, MASTERDOWN   a cluster resharding or failing over; a replica
#                whose link to its master is down (replica-serve-stale-data no)
#   NOSCRIPT     a restarted server forgot the scripts: a new attempt loads them again
# redis-py's cluster client raises RedisClusterException, which is not a RedisError, when
# refreshing its slot map after a CLUSTERDOWN it finds slots that no node serves, or reaches
# no node at all: both pass when the cluster heals (issue 19 item 10).
_CLUSTER_TRANSIENT = ("All slots are not covered", "Redis Cluster cannot be connected")
# Everything a Redis call can raise for a reason outside the caller: what classify() sorts.
REDIS_FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

TRANSIENT_REPLY_CODES = frozenset({"LOADING", "READONLY", "OOM", "MISCONF", "NOREPLICAS", "BUSY", "TRYAGAIN",
                                   "CLUSTERDOWN", "MASTERDOWN", "NOSCRIPT"})
_REPLY_CODE = re.compile(r"(?<![A-Za-z_])(" + "|".join(sorted(TRANSIENT_REPLY_CODES)) + r")(?![A-Za-z_])")


class RedisFault(enum.Enum):
    """What a Redis failure means for the caller, the one classification producer, worker
    and tools share."""

    TRANSIENT = "transient"          # wait (with backoff) and try again: it passes by itself
    CONFIGURATION = "configuration"  # a person must act: credentials, ACL, TLS trust
    FATAL = "fatal"                  # not a Redis condition we know: a bug, surfaced, not retried


def transient_reply_code(exc: BaseException) -> str | None:
    """The "not now" code (MISCONF, BUSY, ...) an error reply carries, or None."""
    if not isinstance(exc, redis.ResponseError):
        return None
    match = _REPLY_CODE.search(str(exc))
    return match.group(1) if match else None


def classify(exc: BaseException) -> RedisFault:
    """The one answer to "does this Redis failure pass by itself?"."""
    if isinstance(exc, RedisUnavailableError):  # our own boundary already decided
        return RedisFault.TRANSIENT
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError | RedisAuthError
                  | RedisPermissionError | RedisTlsError):
        return RedisFault.CONFIGURATION
    if isinstance(exc, TRANSIENT_ERRORS):
        return RedisFault.CONFIGURATION if is_trust_failure(exc) else RedisFault.TRANSIENT
    if isinstance(exc, redis.exceptions.RedisClusterException) and str(exc).startswith(_CLUSTER_TRANSIENT):
        return RedisFault.TRANSIENT
    if isinstance(exc, redis.ResponseError) and _is_refused_credentials(exc):
        return RedisFault.CONFIGURATION
    if transient_reply_code(exc) is not None:
        return RedisFault.TRANSIENT
    return RedisFault.FATAL


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is RedisFault.TRANSIENT


def _is_refused_credentials(exc: redis.ResponseError) -> bool:
    text = str(exc)
    return text.startswith(("WRONGPASS", "NOAUTH", "NOPERM")) or "WRONGPASS" in text or "NOPERM" in text


URL_SHAPE = "redis://[[user]:password@]host[:port][/db] (or rediss://, unix://)"

HEALTH_CHECK_INTERVAL_S = 30
CLIENT_RETRIES = 3


def make_redis(settings: RedisSettings, *, retries: int = CLIENT_RETRIES,
               socket_timeout_s: float | None = None) -> redis.Redis:
    """The client for `settings`; nothing connects until the first command. `retries` and
    `socket_timeout_s` override redis-py's transparent retries and REDIS_SOCKET_TIMEOUT_SECONDS
    (the worker's heartbeat client: a lost reply must cost one renewal, not the heartbeat)."""
    if socket_timeout_s is not None:
        settings = settings.model_copy(update={"socket_timeout_seconds": socket_timeout_s})
    if settings.sentinels:
        return _sentinel_master(settings, retries)
    if settings.cluster:
        # RedisCluster offers the commands and scripts this project uses with the same
        # signatures; callers keep one type.
        return cast(redis.Redis, _cluster(settings, retries))
    if settings.url:
        try:
            return redis.Redis.from_url(settings.url, **_common(settings, retries), **_tls(settings, from_url=True))
        except ValueError as exc:
            # The URL is not echoed: it may hold the password.
            raise SettingsError(f"invalid setting REDIS_URL: {_url_problem(exc)}; expected {URL_SHAPE}") from None
    return redis.Redis(host=settings.host, port=settings.port, db=settings.db, **_credentials(settings),
                       **_common(settings, retries), **_tls(settings))


def _common(settings: RedisSettings, retries: int = CLIENT_RETRIES) -> dict[str, Any]:
    # The same transparent retries whether REDIS_URL or host/port is set (redis-py's
    # defaults differ): a reply lost on a dropped connection is retried on a new one.
    # Every worker script tolerates running twice, and what a retried XREADGROUP or
    # XCLAIM delivers twice stays pending on this consumer until it re-reads it.
    return {"socket_timeout": settings.socket_timeout_seconds,
            "socket_connect_timeout": settings.socket_timeout_seconds,
            "health_check_interval": HEALTH_CHECK_INTERVAL_S,
            "retry": LoggedRetry(ExponentialBackoff(cap=1.0, base=0.05), retries)}


def _credentials(settings: RedisSettings) -> dict[str, Any]:
    password = settings.password.get_secret_value() if settings.password else None
    return {"username": settings.username, "password": password}


def _tls(settings: RedisSettings, from_url: bool = False) -> dict[str, Any]:
    """TLS options; verification of the certificate and its host name stays on."""
    if not settings.uses_tls:
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if not from_url:  # a rediss:// URL picks the SSL connection class itself
        options["ssl"] = True
    for option, path in (("ssl_ca_certs", settings.ca_file), ("ssl_certfile", settings.cert_file),
                         ("ssl_keyfile", settings.key_file)):
        if path is not None:
            options[option] = str(path)
    return options


def _sentinel_master(settings: RedisSettings, retries: int = CLIENT_RETRIES) -> redis.Redis:
    """The master named REDIS_SENTINEL_MASTER; each new connection asks the Sentinels
    where it is now, so a failover needs no restart."""
    assert settings.sentinels is not None
    sentinel_password = settings.sentinel_password.get_secret_value() if settings.sentinel_password else None
    sentinel_kwargs = {**_common(settings), **_tls(settings), "username": settings.sentinel_username,
                       "password": sentinel_password}
    sentinel = redis.sentinel.Sentinel(sentinel_addresses(settings.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    master: redis.Redis = sentinel.master_for(settings.sentinel_master, **_master_kwargs(settings),  # type: ignore[no-untyped-call]
                                              **_common(settings, retries), **_tls(settings))
    return master


def _master_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """Credentials and database for the master: from REDIS_URL when it is set (its host
    is ignored: Sentinel says where the master is), else REDIS_USERNAME/PASSWORD/DB."""
    if not settings.url:
        return {**_credentials(settings), "db": settings.db}
    parsed = redis.connection.parse_url(settings.url)  # type: ignore[no-untyped-call]
    return {key: parsed[key] for key in ("username", "password", "db") if parsed.get(key) is not None}


class _ClusterClient(redis.cluster.RedisCluster):
    """RedisCluster whose pipelines send registered scripts as EVAL.

    A standalone pipeline loads its scripts before MULTI; a cluster pipeline does not, and
    an EVALSHA the node does not know fails inside EXEC while the rest of the MULTI is
    applied. Sending the source costs a few hundred bytes and can never miss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_sources: dict[str, Any] = {}

    def register_script(self, script: Any) -> Any:
        registered = super().register_script(script)
        self.script_sources[registered.sha] = script
        return registered

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        sources = self.script_sources

        def evalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            return pipe.execute_command("EVAL", sources[sha], numkeys, *keys_and_args)

        pipe.evalsha = evalsha
        return pipe


def _cluster(settings: RedisSettings, retries: int = CLIENT_RETRIES) -> redis.cluster.RedisCluster:
    if settings.url:
        return _ClusterClient.from_url(settings.url, **_common(settings, retries), **_tls(settings, from_url=True))
    return _ClusterClient(host=settings.host, port=settings.port, **_credentials(settings),
                          **_common(settings, retries), **_tls(settings))


# urllib's texts can quote a piece of the URL (a password holding '/', '#' or '?' splits
# into "port" text); only these fixed phrases are ever shown.
_URL_PROBLEMS = (("port could not be cast", "the port is not a number"), ("port out of range", "the port is out of range"),
                 ("scheme", "the scheme is not redis://, rediss:// or unix://"))


def _url_problem(exc: ValueError) -> str:
    text = str(exc).lower()
    problem = next((phrase for marker, phrase in _URL_PROBLEMS if marker in text), "it cannot be parsed")
    return f"{problem} (special characters in the password must be percent-encoded)"


def describe(settings: RedisSettings) -> str:
    """Where Redis is, without credentials, for log lines."""
    if settings.sentinels:
        return f"sentinel://{settings.sentinels}/{settings.sentinel_master}"
    scheme = "rediss" if settings.uses_tls else "redis"
    if settings.url:
        where = redact_url(settings.url)
    else:
        where = f"{scheme}://{settings.host}:{settings.port}/{settings.db}"
    return f"cluster {where}" if settings.cluster else where


def redact_url(url: str) -> str:
    """The URL without its userinfo, which ends at the LAST "@" of the URL: passwords often
    hold an unencoded "@", "/", "#" or "?"."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "redis", url
    if "@" in rest:
        # A password may hold '/', '#', '?' or '@' unencoded: everything up to the LAST '@'
        # of the whole URL is userinfo as far as a log line is concerned.
        rest = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{rest}"


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """The one boundary between redis-py's errors and ours, by classify(): refused
    credentials, a refused ACL and an untrusted certificate become errors a person must act
    on; what passes by itself (down, LOADING, READONLY, OOM, MISCONF, NOREPLICAS, BUSY,
    TRYAGAIN, CLUSTERDOWN, MASTERDOWN, ...) becomes RedisUnavailableError, naming what was
    being done; the rest propagates."""
    try:
        yield
    except REDIS_FAILURES as exc:
        raise translate(exc, where) from (exc if classify(exc) is RedisFault.TRANSIENT else None)


def translate(exc: BaseException, where: str) -> BaseException:
    """Our exception for a redis-py failure met during `where` (the failure itself if it is
    FATAL: not ours to rename)."""
    fault = classify(exc)
    if fault is RedisFault.CONFIGURATION:
        if isinstance(exc, redis.AuthenticationError) or str(exc).startswith(("WRONGPASS", "NOAUTH")):
            return RedisAuthError(f"Redis refused the credentials during {where}: check REDIS_URL / REDIS_PASSWORD "
                                  f"({type(exc).__name__})")
        if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in str(exc):
            return RedisPermissionError(f"Redis ACL refused a command during {where}: {exc}; "
                                        "see config/users.acl.example")
        if is_trust_failure(exc):
            return RedisTlsError(trust_message(exc))
        return RedisAuthError(f"Redis refused this client during {where}: {type(exc).__name__}")
    if fault is RedisFault.TRANSIENT:
        if isinstance(exc, RedisUnavailableError):
            return exc
        code = transient_reply_code(exc)
        label = code or type(exc).__name__
        return RedisUnavailableError(f"Redis unavailable during {where}: {label}: {exc}{_tls_hint(exc)}")
    return exc


def is_trust_failure(exc: BaseException) -> bool:
    """A certificate refused on either side: retrying cannot help."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, ssl.SSLError) and "CERTIFICATE" in str(seen.reason or "").upper():
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _tls_hint(exc: BaseException) -> str:
    """A TLS server that closes right after the handshake may be refusing to go on without a
    client certificate (TLS 1.3 tells the client only after it), or may just have died:
    the error stays retryable, with a hint."""
    seen: BaseException | None = exc
    while seen is not None:
        # OpenSSL 3 / Python 3.13 may report the same refusal as a reset while writing.
        if isinstance(seen, ssl.SSLEOFError | ConnectionResetError):
            return (" (the connection was closed by the server: if this persists over TLS, it may require a "
                    "client certificate: REDIS_CERT_FILE and REDIS_KEY_FILE)")
        seen = seen.__cause__ or seen.__context__
    return ""


def trust_message(exc: BaseException) -> str:
    detail = str(exc).splitlines()[0][:300]
    return (f"Redis TLS handshake refused: {detail}; set REDIS_CA_FILE to the CA that signed the server's "
            "certificate (and REDIS_CERT_FILE/REDIS_KEY_FILE if the server asks for a client certificate)")


@dataclass(frozen=True)
class Replication:
    """REDIS_WAIT_REPLICAS: after a write, block until that many replicas hold it.

    Replication is asynchronous: without this, a failover can lose writes the old master
    acknowledged. WAIT only covers the writes of the connection it runs on, and the pool
    may hand out another one; so the wait first writes a marker key (with the stream's
    hash tag) on the connection it then WAITs on: the marker comes after every write made
    before the call, and replicas apply writes in order."""

    replicas: int = 0
    timeout_ms: int = 1000

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> Replication:
        return cls(settings.wait_replicas, settings.wait_timeout_ms)

    def wait(self, client: Any, stream: str) -> None:
        """Return once `replicas` replicas hold every write made so far; else raise
        RedisUnavailableError (retryable: the writes are idempotent)."""
        if self.replicas <= 0:
            return
        with redis_errors("WAIT for replicas"):
            acked = self._marker_then_wait(client, wait_marker(stream))
        if acked < self.replicas:
            raise RedisUnavailableError(f"only {acked} of {self.replicas} replicas (REDIS_WAIT_REPLICAS) "
                                        f"acknowledged within {self.timeout_ms} ms")

    def _marker_then_wait(self, client: Any, marker: str) -> int:
        if isinstance(client, redis.cluster.RedisCluster):
            client = client.get_redis_connection(client.get_node_from_key(marker))  # type: ignore[no-untyped-call]
        pipe = client.pipeline(transaction=False)
        pipe.hset(marker, "at_ms", wall_ms())
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        return int(pipe.execute()[1])
