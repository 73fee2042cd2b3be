"""Pure logic of the re-sync fingerprint (identity.py) and the UID windows (windows.py)."""

from __future__ import annotations

import email
import hashlib

import pytest

from email_ingestion.producer.identity import fingerprint, legacy_fingerprint
from email_ingestion.producer.windows import UidWindows

RAW = (b"Received: by mx\r\nFrom: Ann <ann@x.org>\r\nSubject: Hello\r\n  folded world\r\n"
       b"Message-ID: <m1@x.org>\r\nDate: Mon, 02 Jan 2023 10:00:00 +0000\r\n\r\nbody\r\nFrom: not a header\r\n")


@pytest.mark.parametrize(("header", "why"), [
    (RAW, "the whole message"),
    (RAW.split(b"\r\n\r\n")[0], "the header block"),
    # What Dovecot answers to BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)]:
    (b"From: Ann <ann@x.org>\r\nSubject: Hello\r\n  folded world\r\nMessage-ID: <m1@x.org>\r\n"
     b"Date: Mon, 02 Jan 2023 10:00:00 +0000\r\n\r\n", "the HEADER.FIELDS reply"),
    (RAW.replace(b"\r\n", b"\n"), "bare LF line ends"),
    (RAW.replace(b"Subject: Hello\r\n  folded", b"SUBJECT:   Hello folded"), "other case and folding"),
])
def test_fingerprint_is_the_same_from_every_source(header, why):
    """Emission (whole message) and re-sync (header fields only) must agree, or a re-sync re-delivers."""
    assert fingerprint(header, 1234, None) == fingerprint(RAW, 1234, None), why


def test_fingerprint_depends_on_content_not_on_arrival():
    assert fingerprint(RAW, 1234, None) != fingerprint(RAW, 1235, None)
    assert fingerprint(RAW, 1234, None) != fingerprint(RAW.replace(b"<m1@", b"<m2@"), 1234, None)
    assert fingerprint(RAW, 1234, None) != fingerprint(RAW.replace(b"10:00:00", b"10:00:01"), 1234, None)
    assert fingerprint(RAW, 1234, "1777") == "gm:1777"
    assert fingerprint(RAW, 1234, None).startswith("c:")


def _old_version(raw: bytes, internal: str, size: int) -> str:
    """The fingerprint as versions before issue 9 computed it, for the compatibility check."""
    first: dict[str, str] = {}
    for name, value in email.message_from_bytes(raw).raw_items():
        first.setdefault(name.lower(), value)

    def norm(name: str) -> str:
        return " ".join(str(first.get(name.lower()) or "").split())
    identity = norm("Message-ID") or "|".join(norm(h) for h in ("Date", "From", "Subject"))
    return "h:" + hashlib.sha256(f"{identity}|{internal}|{size}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


@pytest.mark.parametrize("raw", [RAW, RAW.replace(b"Message-ID: <m1@x.org>\r\n", b""),
                                 RAW.replace(b"Ann", "Jürgen".encode())])
def test_legacy_fingerprint_matches_what_older_versions_stored(raw):
    assert legacy_fingerprint(raw, "2024-05-01T12:00:00Z", 99) == _old_version(raw, "2024-05-01T12:00:00Z", 99)


class FakeSession:
    """UIDs on a server (multiples of 7 are 2,000 bytes, others 10); records searched ranges."""

    def __init__(self, uids: list[int], esearch: bool = True, sizes: dict[int, int] | None = None) -> None:
        self.uids = uids
        self.sizes = sizes or {u: 2000 if u % 7 == 0 else 10 for u in uids}
        self.can_esearch = esearch
        self.searched: list[tuple[int, int]] = []

    def uids_in(self, lo: int, hi: int, *criteria: object) -> list[int]:
        if not criteria:
            self.searched.append((lo, hi))
        larger = int(str(criteria[1])) if criteria else -1
        return [u for u in self.uids if lo <= u <= hi and self.sizes[u] > larger]

    def sizes_in(self, lo: int, hi: int) -> dict[int, int]:
        self.searched.append((lo, hi))
        return {u: self.sizes[u] for u in self.uids if lo <= u <= hi}

    def lowest_uid(self) -> int | None:
        return min(self.uids, default=None)

    def first_uid_in(self, lo: int, hi: int) -> int | None:
        return min((u for u in self.uids if lo <= u <= hi), default=None)


@pytest.mark.parametrize("esearch", [True, False])
def test_windows_cover_every_uid_once_with_bounded_searches(esearch):
    uids = list(range(5, 2_000)) + list(range(3_000_000_000, 3_000_000_300))
    # Without ESEARCH only the gap before the first message is jumped (by FETCH 1 (UID)).
    session = FakeSession(uids if esearch else uids[1995:], esearch)
    windows = UidWindows(session=session, first_uid=1, last_uid=max(session.uids), batch_size=64,
                         large_bytes=1000, span=500)
    batches = list(windows)
    assert [u for b in batches for u in b.uids] == session.uids
    assert all(len(b.uids) <= 64 for b in batches)
    assert all(hi - lo < 500 for lo, hi in session.searched)
    assert {u for b in batches for u in b.large} == {u for u in session.uids if u % 7 == 0}
    assert len(session.searched) <= 6, "the gap of three billion UIDs is jumped, not searched"


def test_windows_stop_at_the_last_uid():
    session = FakeSession(list(range(1, 100)))
    batches = list(UidWindows(session=session, first_uid=10, last_uid=20, batch_size=5, large_bytes=1))
    assert [b.uids for b in batches] == [[10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [20]]


@pytest.mark.parametrize("last_uid", [300, 40])  # a long window (SEARCH LARGER), a short one (sizes)
def test_batches_are_cut_by_bytes_too(last_uid):
    """BATCH_SIZE messages of almost LARGE_MESSAGE_BYTES each must not be one batch in memory."""
    mb = 1024 * 1024
    sizes = {u: 3 * mb if u % 50 == 0 else 900 * 1024 if u % 3 == 0 else 5_000 for u in range(1, 301)}
    session = FakeSession(list(range(1, 301)), sizes=sizes)
    batches = list(UidWindows(session=session, first_uid=1, last_uid=last_uid, batch_size=500,
                              large_bytes=mb, batch_max_bytes=4 * mb))
    assert [u for b in batches for u in b.uids] == list(range(1, last_uid + 1))
    for batch in batches:
        assert sum(sizes[u] for u in batch.uids if u not in batch.large) <= 4 * mb
        assert batch.large == {u for u in batch.uids if sizes[u] > mb}
