"""Redis topology settings: each wrong value is refused at start with one line naming it."""

from __future__ import annotations

import pytest

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.redis_client import describe
from email_ingestion.common.settings import load_settings, sentinel_addresses


@pytest.mark.parametrize(("env", "named"), [
    ({"REDIS_SENTINELS": "127.0.0.1"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "h:1,h:99999"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "h:1", "REDIS_CLUSTER": "true"}, "REDIS_SENTINELS and REDIS_CLUSTER"),
    ({"REDIS_CA_FILE": "/nonexistent/ca.pem"}, "REDIS_CA_FILE"),
    ({"REDIS_CERT_FILE": __file__}, "REDIS_CERT_FILE and REDIS_KEY_FILE"),
    ({"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "20000"}, "REDIS_WAIT_TIMEOUT_MS"),
    ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS"),
    ({"REDIS_STREAM_NAME": "mail}box"}, "REDIS_STREAM_NAME"),
    ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://node:7000/2"}, "REDIS_DB"),
    ({"REDIS_CLUSTER": "true", "REDIS_DB": "1"}, "REDIS_DB"),
])
def test_bad_topology_settings_are_one_line_naming_the_variable(monkeypatch, env, named):
    """The message names the variable and fits on one line."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert named in message and "\n" not in message, message


def test_sentinel_addresses_and_description(monkeypatch):
    """host:port lists parse (IPv6 in brackets too); log lines say where Redis is, no password."""
    assert sentinel_addresses(" a:1, [::1]:26379 ") == [("a", 1), ("::1", 26379)]
    monkeypatch.setenv("REDIS_SENTINELS", "a:1,b:2")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "s3cret-sentinel")
    settings = load_settings(env_file=None)
    assert describe(settings.redis) == "sentinel://a:1,b:2/mymaster"
    assert "s3cret-sentinel" in settings.secrets()
    monkeypatch.delenv("REDIS_SENTINELS")
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@node1:7000/0")
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    assert describe(load_settings(env_file=None).redis) == "cluster rediss://node1:7000/0"
