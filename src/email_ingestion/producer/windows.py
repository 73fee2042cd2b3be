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
# A batch is also cut by bytes: the read-ahead holds two batches, and BATCH_SIZE messages of
# almost LARGE_MESSAGE_BYTES each would be hundreds of MB. Sizes are known exactly for short
# windows; in long ones a message counts as MEDIUM_BYTES unless `LARGER MEDIUM_BYTES` says
# it may be up to LARGE_MESSAGE_BYTES (large ones cost their header and text previews only).
BATCH_MAX_BYTES = 32 * 1024 * 1024
MEDIUM_BYTES = 64 * 1024


_LARGE_COST = MEDIUM_BYTES  # a large message costs its header, BODYSTRUCTURE and text previews


@dataclass(frozen=True)
class _Window:
    costs: dict[int, int]  # UID -> bytes its download may cost, ascending
    large: set[int]


@dataclass(frozen=True)
class Batch:
    """UIDs fetched together, and which of them are too large to download whole."""

    uids: list[int]
    large: frozenset[int]


class UidWindows:
    """Batches of the UIDs in first_uid..last_uid that exist, ascending."""

    def __init__(self, *, session: ImapSession, first_uid: int, last_uid: int, batch_size: int,
                 large_bytes: int, span: int = SEARCH_WINDOW_UIDS, batch_max_bytes: int = BATCH_MAX_BYTES) -> None:
        self.session = session
        self.first_uid = max(first_uid, 1)
        self.last_uid = last_uid
        self.batch_size = batch_size
        self.large_bytes = large_bytes
        self.span = span
        self.batch_max_bytes = batch_max_bytes

    def __iter__(self) -> Iterator[Batch]:
        for window in self._windows():
            part: list[int] = []
            total = 0
            for uid, cost in window.costs.items():
                if part and (len(part) == self.batch_size or total + cost > self.batch_max_bytes):
                    yield Batch(part, frozenset(window.large.intersection(part)))
                    part, total = [], 0
                part.append(uid)
                total += cost
            if part:
                yield Batch(part, frozenset(window.large.intersection(part)))

    def _windows(self) -> Iterator[_Window]:
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
            window = self._search(lo, hi)
            if window.costs:
                yield window
            lo, jump = hi + 1, not window.costs

    def _search(self, lo: int, hi: int) -> _Window:
        if hi - lo < self.batch_size:  # short (an IDLE wake-up): UIDs and sizes in one round trip
            sizes = self.session.sizes_in(lo, hi)
            large = {uid for uid, size in sizes.items() if size > self.large_bytes}
            return _Window({uid: _LARGE_COST if uid in large else size for uid, size in sorted(sizes.items())}, large)
        uids = self.session.uids_in(lo, hi)
        medium_bytes = min(MEDIUM_BYTES, self.large_bytes)
        medium = set(self.session.uids_in(lo, hi, "LARGER", str(medium_bytes))) if uids else set()
        large = set(self.session.uids_in(lo, hi, "LARGER", str(self.large_bytes))) if medium else set()
        return _Window({uid: _LARGE_COST if uid in large else self.large_bytes if uid in medium else MEDIUM_BYTES
                        for uid in uids}, large)

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
