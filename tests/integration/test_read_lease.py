"""The busy loop's read that leases what it reads in the same script (read_lease.py), on a
real redis-server: the key it leases is the payload's, however the payload is written."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.settings import load_settings
from email_ingestion.sandbox.sample_payloads import make_payload
from email_ingestion.worker.cli import build_worker
from email_ingestion.worker.idempotency import lease_value
from email_ingestion.worker.read_lease import ReadAndLease

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys(STREAM, GROUP)


def _read(client: Any, count: int = 10) -> list[Any]:
    reader = ReadAndLease(client, keys=KEYS, consumer="w", lease_ms=60_000)
    pipe = client.pipeline(transaction=False)
    reader.queue(pipe, count)
    return reader.parse(pipe.execute()[0])


def _decoy_first(uid: int) -> str:
    """A payload whose first `"idempotency_key":"` is a header's, not the top-level key."""
    data = make_payload(uid).model_dump(mode="json", by_alias=True)
    data["headers"] = {"idempotency_key": "forged", **data["headers"]}
    return json.dumps({"headers": data.pop("headers"), **data})


@pytest.mark.parametrize(("payload", "key"), [
    (make_payload(1).to_json(), make_payload(1).idempotency_key),
    (_decoy_first(2), make_payload(2).idempotency_key),
    (json.dumps({"idempotency_key": 'a"quoted\\key'}), 'a"quoted\\key'),
    ("not json at all", None),
])
def test_the_read_leases_the_payloads_own_key(redis_client, payload, key):
    """The producer's layout is read without decoding; a decoy, escapes or no JSON are not misread."""
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry_id = redis_client.xadd(STREAM, {"payload": payload}).decode()
    [delivery] = _read(redis_client)
    assert delivery.entry_id == entry_id and delivery.payload == payload.encode()
    if key is None:
        assert delivery.lease_asked is None
        return
    assert delivery.lease_asked is not None and delivery.lease_asked.key == key
    assert delivery.lease_asked.previous is None
    assert redis_client.get(KEYS.idempotency(key)) == lease_value("w", entry_id).encode()
    assert not redis_client.exists(KEYS.idempotency("forged"))


def test_a_key_the_read_got_wrong_is_given_back_and_the_right_one_leased(redis_server, redis_client, monkeypatch):
    """JSON with the key twice: the script leases the first, the payload means the last. The
    worker gives the first back, leases the last, and handles the message once."""
    for name, value in {"REDIS_URL": redis_server.url, "WORKER_BLOCK_TIMEOUT_MS": "200"}.items():
        monkeypatch.setenv(name, value)
    right = make_payload(3)
    twice = '{"idempotency_key":"wrong",' + right.to_json()[1:]
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    redis_client.xadd(STREAM, {"payload": twice})
    seen: Counter[str] = Counter()
    worker = build_worker(load_settings(env_file=None), "w", threading.Event())
    worker.processor.handler = lambda payload, ctx: seen.update([ctx.idempotency_key])
    deliveries, _ = worker._beat_move_due_and_read()
    assert deliveries[0].lease_asked is not None and deliveries[0].lease_asked.key == "wrong"
    assert worker.processor.process(deliveries).processed == 1
    assert seen == Counter({right.idempotency_key: 1})
    assert not redis_client.exists(KEYS.idempotency("wrong"))
    assert redis_client.get(KEYS.idempotency(right.idempotency_key)) == b"done"
