"""Paged stream reading shared by the DLQ tools, the console and `status` (real redis-server)."""

from __future__ import annotations

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.stream_pages import StreamPages
from email_ingestion.console.search import Searcher
from email_ingestion.sandbox.sample_payloads import make_payload

KEY = "pages-test"


@pytest.fixture
def ids(redis_client) -> list[bytes]:
    pipe = redis_client.pipeline(transaction=False)
    for i in range(2345):
        pipe.xadd(KEY, {"n": str(i)})
    return pipe.execute()


def test_every_entry_once_in_order_both_ways(redis_client, ids):
    oldest = list(StreamPages(redis_client, KEY, page_size=100))
    newest = list(StreamPages(redis_client, KEY, page_size=100, newest_first=True))
    assert [entry_id for entry_id, _ in oldest] == ids
    assert [entry_id for entry_id, _ in newest] == ids[::-1]


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize(("limit", "cut"), [(1, True), (1500, True), (2344, True), (2345, False), (5000, False)])
def test_a_limit_reads_that_many_and_says_whether_it_cut(redis_client, ids, newest_first, limit, cut):
    """Also when the limit is not a multiple of the page size, and when the stream holds exactly
    the limit (nothing was left unread, so nothing is reported cut)."""
    pages = StreamPages(redis_client, KEY, page_size=100, newest_first=newest_first, max_entries=limit)
    read = [entry_id for entry_id, _ in pages]
    expected = (ids[::-1] if newest_first else ids)[:limit]
    assert read == expected
    assert (pages.read, pages.truncated) == (len(expected), cut)


def test_bounds_are_inclusive(redis_client, ids):
    between = StreamPages(redis_client, KEY, page_size=7, first=ids[10].decode(), last=ids[999].decode())
    assert [entry_id for entry_id, _ in between] == ids[10:1000]


def test_search_says_when_its_limit_left_entries_unsearched(redis_client):
    """A limit that is not a multiple of the search's page (1,000) was reported as a complete read."""
    keys = StreamKeys(stream="email_ingestion_stream", group="email_processor_group")
    pipe = redis_client.pipeline(transaction=False)
    for i in range(2000):
        pipe.xadd(keys.stream, {"payload": make_payload(i).to_json()})
    pipe.execute()
    cut = Searcher(redis_client, keys=keys, max_entries=1500).search("m0@example.org", "message_id")
    assert (cut.stream_entries_read, cut.stream_truncated, cut.hits) == (1500, True, [])
    whole = Searcher(redis_client, keys=keys, max_entries=2000).search("m0@example.org", "message_id")
    assert (whole.stream_entries_read, whole.stream_truncated, len(whole.hits)) == (2000, False, 1)


def test_a_second_pass_counts_afresh(redis_client, ids):
    pages = StreamPages(redis_client, KEY, page_size=100, max_entries=1500)
    assert len(list(pages)) == len(list(pages)) == 1500
    assert (pages.read, pages.truncated) == (1500, True)
