"""Every key derived from a stream lands on the stream's cluster slot, whatever the names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from email_ingestion.common.keys import MailboxKeys, StreamKeys, dlq_stream, wait_marker
from email_ingestion.common.settings import RedisSettings

names = st.text(alphabet="ab{}:%x", min_size=1, max_size=12)


def slot(key: str) -> int:
    return key_slot(key.encode())


def stream_keys(stream: str, account: str, group: str, dlq: str) -> list[str]:
    mailbox, consumer = MailboxKeys(stream, account, "IN{B}OX"), StreamKeys(stream, group)
    return [mailbox.state, mailbox.seen, mailbox.fingerprints, consumer.retries, consumer.retry_payloads,
            consumer.idempotency("k}{"), consumer.heartbeat(account), dlq_stream(stream, dlq), wait_marker(stream)]


@given(stream=names, account=names, group=names, dlq=names)
def test_every_key_shares_the_stream_slot(stream: str, account: str, group: str, dlq: str) -> None:
    """Names with braces and colons anywhere still give keys on the stream's slot (or the
    stream name is refused by the settings)."""
    try:
        RedisSettings(stream_name=stream)
    except ValueError:
        return
    assert {slot(k) for k in stream_keys(stream, account, group, dlq)} == {slot(stream)}


@pytest.mark.parametrize("stream", ["a}b", "{}x", "x}"])
def test_a_stream_name_that_cannot_share_its_slot_is_refused(stream: str) -> None:
    """A '}' outside a {hash tag} would split the stream from its keys: a clear error."""
    with pytest.raises(ValueError, match="REDIS_STREAM_NAME|hash tag"):
        RedisSettings(stream_name=stream)


def consumer_keys(stream: str, group: str, dlq: str) -> list[str]:
    keys = StreamKeys.of(stream, group, dlq)
    return [keys.retries, keys.retry_payloads, keys.idempotency("k"), keys.heartbeat("c"), keys.dlq]


@given(first=names, second=names, group=names, dlq=names)
def test_two_streams_share_no_consumer_key(first: str, second: str, group: str, dlq: str) -> None:
    """Two streams, even with one hash tag ({mail}alice, {mail}bob; {mail} and mail), never
    share a retry set, retry store, lease, heartbeat or DLQ (issue 19 item 1)."""
    try:
        RedisSettings(stream_name=first)
        RedisSettings(stream_name=second)
    except ValueError:
        return
    if first != second:
        assert not set(consumer_keys(first, group, dlq)) & set(consumer_keys(second, group, dlq))


@pytest.mark.parametrize(("first", "second"), [("{mail}alice", "{mail}bob"), ("{mail}", "mail"), ("a", "b")])
def test_named_pairs_share_no_consumer_key(first: str, second: str) -> None:
    """The pairs of the issue: same tag, tag vs whole name, no tag."""
    for dlq in ("email_ingestion_dlq", "{mail}dlq"):
        assert not set(consumer_keys(first, "g", dlq)) & set(consumer_keys(second, "g", dlq))
