"""One classification of Redis failures (common/redis_client.classify), shared by producer, worker and tools."""

from __future__ import annotations

import pytest
import redis
import redis.exceptions

from email_ingestion.common.errors import RedisAuthError, RedisPermissionError, RedisUnavailableError
from email_ingestion.common.redis_client import RedisFault, classify, redis_errors, transient_reply_code

TRANSIENT_REPLIES = [
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOREPLICAS Not enough good replicas to write.",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "LOADING Redis is loading the dataset in memory",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "Command # 2 (EVALSHA abc 3 k) of pipeline caused error: MISCONF Redis is configured to save",
    "EXECABORT Transaction discarded because of previous errors: NOREPLICAS Not enough good replicas",
    "ERR user_script:1: BUSY Redis is busy running a script",
]


@pytest.mark.parametrize("reply", TRANSIENT_REPLIES)
def test_transient_replies_are_waited_out(reply: str) -> None:
    """Every "not now" reply is transient wherever redis-py quotes it, and the boundary names its code."""
    exc = redis.ResponseError(reply)
    assert classify(exc) is RedisFault.TRANSIENT
    with pytest.raises(RedisUnavailableError, match=transient_reply_code(exc) or "?"):
        with redis_errors("a test"):
            raise exc


@pytest.mark.parametrize("reply", ["BUSYGROUP Consumer Group name already exists", "ERR unknown command 'FOO'",
                                   "WRONGTYPE Operation against a key holding the wrong kind of value",
                                   "NOGROUP No such key 'x' or consumer group 'g'"])
def test_other_replies_are_not_transient(reply: str) -> None:
    """Replies that will not change by waiting propagate unchanged (BUSYGROUP is not BUSY)."""
    exc = redis.ResponseError(reply)
    assert classify(exc) is RedisFault.FATAL
    with pytest.raises(redis.ResponseError):
        with redis_errors("a test"):
            raise exc


def test_credentials_acl_and_connection_faults() -> None:
    """Refused credentials and ACL need a person; a dropped connection passes by itself."""
    assert classify(redis.AuthenticationError("invalid password")) is RedisFault.CONFIGURATION
    assert classify(redis.ResponseError("WRONGPASS invalid username-password pair")) is RedisFault.CONFIGURATION
    assert classify(redis.exceptions.NoPermissionError("NOPERM no permission")) is RedisFault.CONFIGURATION
    assert classify(redis.ConnectionError("reset")) is RedisFault.TRANSIENT
    assert classify(redis.TimeoutError("timed out")) is RedisFault.TRANSIENT
    with pytest.raises(RedisAuthError):
        with redis_errors("a test"):
            raise redis.ResponseError("WRONGPASS invalid username-password pair")
    with pytest.raises(RedisPermissionError):
        with redis_errors("a test"):
            raise redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run 'xadd'")


def test_a_cluster_client_finding_slots_unserved_waits():
    """redis-py's cluster client, refreshing its slot map during CLUSTERDOWN, raises a
    RedisClusterException (not a RedisError): transient, and the boundary translates it."""
    exc = redis.exceptions.RedisClusterException(
        "All slots are not covered after query all startup_nodes. 16383 of 16384 covered...")
    assert classify(exc) is RedisFault.TRANSIENT
    with pytest.raises(RedisUnavailableError):
        with redis_errors("a test"):
            raise exc
    assert classify(redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node")) \
        is RedisFault.FATAL
