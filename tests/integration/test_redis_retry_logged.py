"""Issue 19 item 13: a command that fails is logged the moment it fails, even when
redis-py's own retry on a new connection then succeeds (a real redis-server behind the
sandbox's TCP proxy, which loses a reply and drops the connection)."""

from __future__ import annotations

import logging

import pytest

from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import RedisSettings
from email_ingestion.sandbox.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(redis_server):
    network = TcpProxy(redis_server.port).start()
    yield network
    network.stop()


def test_a_failure_absorbed_by_redis_py_retries_is_still_logged(proxy, redis_client, caplog):
    """The reply to a SET is lost and its connection dropped: the SET succeeds through
    redis-py's retry, and one WARNING says a command failed, one INFO that commands succeed
    again."""
    client = make_redis(RedisSettings(url=f"redis://127.0.0.1:{proxy.port}/0"))
    assert client.ping()
    proxy.drop_next_reply(b"+OK")
    with caplog.at_level(logging.INFO, logger="email_ingestion.redis"):
        assert client.set("retried", "1")
        assert client.get("retried") == b"1"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["Redis command failed; retrying on a new connection"]
    assert "Redis commands succeed again" in caplog.text
