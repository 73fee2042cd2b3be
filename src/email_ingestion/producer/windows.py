"""The UIDs of one pass, searched one UID window at a time and cut into batches.

imaplib refuses a reply line over 1,000,000 bytes, and `UID SEARCH` answers on one line: a
Gmail All Mail of ~150,000 messages (fewer with long UIDs) would never start (issue 9 §2).
So a pass never asks for more than `SEARCH_WINDOW_UIDS` UIDs at a time, between its first
UID and the mailbox's UIDNEXT when the pass began; only the current window is held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from email_ingestion.imap.session import ImapSession

# 11 bytes per 10-digit UID: at most 550 KB per SEARCH reply, half of imaplib's line limit.
SEARCH_WINDOW_UIDS = 50_000


@dataclass(frozen=True)
class Batch:
    """UIDs fetched together, and which of them are too large to download whole."""

    uids: list[int]
    large: frozenset[int]


class UidWindows:
    """Batches of the UIDs in first_uid..last_uid that exist, ascending."""

    def __init__(self, *, session: ImapSession, first_uid: int, last_uid: int, batch_size: int,
                 large_bytes: int, span: int = SEARCH_WINDOW_UIDS) -> None:
        self.session = session
        self.first_uid = max(first_uid, 1)
        self.last_uid = last_uid
        self.batch_size = batch_size
        self.large_bytes = large_bytes
        self.span = span

    def __iter__(self) -> Iterator[Batch]:
        for uids, large in self._windows():
            for offset in range(0, len(uids), self.batch_size):
                part = uids[offset:offset + self.batch_size]
                yield Batch(part, frozenset(large.intersection(part)))

    def _windows(self) -> Iterator[tuple[list[int], set[int]]]:
        lo = self.first_uid
        # Jump gaps wider than a window in one command (long runs of expunged UIDs, or UIDs
        # that start in the billions after a migration) instead of searching them empty.
        # Without ESEARCH only the gap before the first message can be jumped.
        jump = self.last_uid - lo >= self.span
        if jump and not self.session.can_esearch:
            lo = max(lo, self.session.lowest_uid() or self.last_uid + 1)
        while lo <= self.last_uid:
            if jump and self.session.can_esearch:
                found = self.session.first_uid_in(lo, self.last_uid)
                if found is None:
                    return
                lo = found
            hi = min(lo + self.span - 1, self.last_uid)
            uids, large = self._search(lo, hi)
            if uids:
                yield uids, large
            lo, jump = hi + 1, not uids

    def _search(self, lo: int, hi: int) -> tuple[list[int], set[int]]:
        if hi - lo < self.batch_size:
            sizes = self.session.sizes_in(lo, hi)
            return sorted(sizes), {uid for uid, size in sizes.items() if size > self.large_bytes}
        uids = self.session.uids_in(lo, hi)
        return uids, set(self.session.uids_in(lo, hi, "LARGER", str(self.large_bytes))) if uids else set()

    def first_matching(self, *criteria: object) -> int | None:
        """The lowest UID in the range matching `criteria` (e.g. SINCE for INITIAL_SYNC)."""
        lo: int | None = self.first_uid
        if self.last_uid - self.first_uid >= self.span and self.session.can_esearch:
            lo = self.session.first_uid_in(self.first_uid, self.last_uid)
        while lo is not None and lo <= self.last_uid:
            hi = min(lo + self.span - 1, self.last_uid)
            found = self.session.uids_in(lo, hi, *criteria)
            if found:
                return found[0]
            lo = hi + 1
        return None
