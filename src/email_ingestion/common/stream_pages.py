"""Reading a stream (a DLQ, the main stream) a page at a time, up to a limit.

Every operator view reads this way: a stream of large payloads is never held in memory, nor
sent, all at once, and a view over a huge DLQ stops at its limit and can say that it did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from email_ingestion.common.text import to_text

Entry = tuple[Any, dict[Any, Any]]  # (id, fields) as the client returns them: bytes unless it decodes


class StreamPages:
    """The entries of `key` between `first` and `last` (inclusive), oldest first or newest first,
    at most `max_entries` of them (all when None). After the iteration, `read` counts what was
    read and `truncated` says whether the limit left entries unread."""

    def __init__(self, client: redis.Redis, key: str, *, page_size: int, newest_first: bool = False,
                 first: str = "-", last: str = "+", max_entries: int | None = None) -> None:
        self.client, self.key, self.page_size, self.newest_first = client, key, page_size, newest_first
        self.first, self.last, self.max_entries = first, last, max_entries
        self.read, self.truncated = 0, False

    def __iter__(self) -> Iterator[Entry]:
        low, high = self.first, self.last
        self.read, self.truncated = 0, False  # counts of this pass, should it be iterated again
        while True:
            left = None if self.max_entries is None else self.max_entries - self.read
            if left == 0:
                # One entry more tells a stream of exactly the limit from a longer one.
                self.truncated = bool(self._page(low, high, 1))
                return
            count = self.page_size if left is None else min(self.page_size, left)
            page = self._page(low, high, count)
            self.read += len(page)
            yield from page
            if len(page) < count:
                return
            # Exclusive bounds: the next page starts after the last entry of this one.
            if self.newest_first:
                high = "(" + to_text(page[-1][0])
            else:
                low = "(" + to_text(page[-1][0])

    def _page(self, low: str, high: str, count: int) -> list[Entry]:
        page: Any = (self.client.xrevrange(self.key, max=high, min=low, count=count) if self.newest_first
                     else self.client.xrange(self.key, min=low, max=high, count=count))
        return list(page)
