"""Search by Message-ID, X-GM-MSGID, stream id and idempotency key across the stream, the retries and the DLQ."""

from __future__ import annotations

from urllib.parse import quote

from email_ingestion.sandbox.sample_payloads import make_payload
from tests.console.conftest import STREAM, VIEWER
from tests.console.test_http_auth import add_letter


def test_search_finds_by_each_kind_of_id(as_user, redis_client):
    """Message-ID (with or without brackets), X-GM-MSGID, stream id and idempotency key find the entry."""
    payload = make_payload(3, gmail_msgid="1789000000000000003")
    entry = redis_client.xadd(STREAM, {"payload": payload.to_json()}).decode()
    client = as_user(VIEWER)
    for query, kind in [("<m3@example.org>", "message_id"), ("m3@example.org", "any"), ("1789000000000000003", "gmail_msgid"),
                        (entry, "stream_id"), (payload.idempotency_key, "idempotency_key")]:
        body = client.get(f"/search?q={quote(query)}&kind={kind}").get_data(as_text=True)
        assert "1 found" in body and entry in body, (query, kind)


def test_search_says_where_a_stream_entry_stands(as_user, redis_client):
    """A stream hit says whether the group has not read it yet, holds it pending, or acknowledged it."""
    first, second = (redis_client.xadd(STREAM, {"payload": make_payload(i).to_json()}).decode() for i in (1, 2))
    client = as_user(VIEWER)

    def status(index: int) -> str:
        body = client.get(f"/search?q=%3Cm{index}%40example.org%3E").get_data(as_text=True)
        return body.split('id="search-results"', 1)[1].split("<td>")[2].split("</td>")[0]

    assert status(1) == "waiting (no group yet)"
    redis_client.xgroup_create(STREAM, "email_processor_group", id="0")
    assert status(1) == "waiting"
    redis_client.xreadgroup("email_processor_group", "c1", {STREAM: ">"}, count=2)
    redis_client.xack(STREAM, "email_processor_group", first)
    assert (status(1), status(2)) == ("acknowledged", "pending")
    assert second


def test_search_reaches_the_retry_schedule_and_the_dlq(as_user, redis_client):
    """A message waiting for its retry and one in the DLQ are found by Message-ID, and the DLQ
    letter also by the stream id it had before it died (original_id)."""
    from email_ingestion.common.keys import StreamKeys
    from email_ingestion.worker.retries import RetryRecord
    keys = StreamKeys(stream=STREAM, group="email_processor_group")
    record = RetryRecord(make_payload(5).to_json(), 1, 1764648151224, "RuntimeError: try later", "1764648150000-3")
    redis_client.hset(keys.retry_payloads, "1764648150000-3", record.to_json())
    redis_client.zadd(keys.retries, {"1764648150000-3": 1764648160000})
    letter = add_letter(redis_client, payload=make_payload(6).to_json(), original_id="1764648150000-4")
    client = as_user(VIEWER)
    body = client.get("/search?q=%3Cm5%40example.org%3E").get_data(as_text=True)
    assert "1 found" in body and "<td>retries</td>" in body
    body = client.get("/search?q=m6%40example.org&kind=message_id").get_data(as_text=True)
    assert "1 found" in body and "<td>dlq</td>" in body and letter in body
    body = client.get("/search?q=1764648150000-4&kind=stream_id").get_data(as_text=True)
    assert "1 found" in body and letter in body
    body = client.get("/search?q=1764648150000-3&kind=stream_id").get_data(as_text=True)
    assert "1 found" in body and "<td>retries</td>" in body
