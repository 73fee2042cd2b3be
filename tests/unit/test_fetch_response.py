"""The fast FETCH parser gives exactly what imapclient's parser gives, or declines."""

from __future__ import annotations

import datetime as dt

import pytest
from imapclient.response_parser import parse_fetch_response

from email_ingestion.imap.fetch_response import parse_bulk_fetch
from email_ingestion.imap.session import uid_set

BODY = b"Subject: x\r\n\r\nhello\r\n"


def reply(prefix: bytes, closing: bytes = b")") -> list:
    return [(prefix + b" BODY[] {%d}" % len(BODY), BODY), closing]


@pytest.mark.parametrize("prefix", [
    b'1 (UID 7 FLAGS (\\Seen \\Recent) INTERNALDATE "22-Nov-2026 19:21:17 +0100" RFC822.SIZE 21',
    b'2 (UID 8 FLAGS () INTERNALDATE " 2-Jan-2023 09:00:00 -0500" RFC822.SIZE 21',
    b'3 (X-GM-THRID 1801 X-GM-MSGID 1802 X-GM-LABELS (\\Important "My Label" "&AOk-t&AOk-") UID 9 '
    b'FLAGS ($Forwarded) INTERNALDATE "01-Jan-2024 00:00:00 +0000" RFC822.SIZE 21',
])
def test_matches_imapclient(prefix):
    """On ordinary and Gmail-extension FETCH replies the fast parser returns exactly imapclient's result."""
    data = reply(prefix)
    expected = parse_fetch_response(data, normalise_times=False, uid_is_key=True)
    assert parse_bulk_fetch(data) == dict(expected)


def test_internaldate_keeps_its_offset():
    """INTERNALDATE is parsed as an aware datetime that keeps the server's UTC offset."""
    parsed = parse_bulk_fetch(reply(b'1 (UID 1 FLAGS () INTERNALDATE "22-Nov-2026 19:21:17 +0100" RFC822.SIZE 21'))
    assert parsed[1][b"INTERNALDATE"].utcoffset() == dt.timedelta(hours=1)


@pytest.mark.parametrize("data", [
    reply(b'1 (UID 1 FLAGS ((nested)) RFC822.SIZE 21'),
    reply(b'1 (UID 1 RFC822.SIZE 21', closing=b" FLAGS (\\Seen))"),  # items after the literal
    [b"5 (FLAGS (\\Seen))"],  # unsolicited flag update
    reply(b'1 (UID 1 ENVELOPE NIL'),  # an item the fast path does not know
    reply(b'1 (FLAGS () RFC822.SIZE 21'),  # no UID
])
def test_declines_anything_unusual(data):
    """Nested lists, items after the literal, unsolicited or unknown items, or no UID: returns None."""
    assert parse_bulk_fetch(data) is None


def test_uid_set_collapses_runs():
    """uid_set sorts UIDs and collapses consecutive runs into IMAP ranges."""
    assert uid_set([3, 1, 2, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
