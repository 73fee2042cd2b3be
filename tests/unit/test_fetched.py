"""The typed FETCH record: each server item read once at the IMAP boundary, table-driven."""

from __future__ import annotations

import datetime as dt

import pytest
from imapclient.response_parser import parse_fetch_response

from email_ingestion.imap.fetched import FetchedMessage, fetched_message, fetched_messages

PLUS_ONE = dt.timezone(dt.timedelta(hours=1))


def parsed(line: bytes, literal: bytes | None = None) -> dict:
    """imapclient's own parse of one FETCH reply, as ImapSession.fetch hands it over."""
    data = [(line, literal), b")"] if literal is not None else [line]
    return dict(parse_fetch_response(data, normalise_times=False, uid_is_key=True))


@pytest.mark.parametrize(("line", "literal", "expected"), [
    (b'1 (UID 7 FLAGS (\\Seen) INTERNALDATE "22-Nov-2026 19:21:17 +0100" RFC822.SIZE 5 BODY[] {5}', b"hello",
     FetchedMessage(uid=7, size=5, internal_date=dt.datetime(2026, 11, 22, 18, 21, 17, tzinfo=dt.UTC),
                    flags=("\\Seen",), body=b"hello")),
    (b'2 (UID 8 X-GM-MSGID 1802 X-GM-THRID 1801 X-GM-LABELS ("&AOk-t&AOk-" \\Inbox) BODY[HEADER] {4}', b"a: b",
     FetchedMessage(uid=8, header=b"a: b", gmail_msgid="1802", gmail_thrid="1801", gmail_labels=("été", "\\Inbox"))),
    (b'3 (UID 9 BODY[1.2]<0> {3}', b"abc", FetchedMessage(uid=9, sections=(("1.2", b"abc"),))),
    (b"4 (UID 10 RFC822.SIZE 0 BODY[] NIL)", None, FetchedMessage(uid=10, size=0)),
])
def test_fetch_items_become_attributes(line, literal, expected):
    """Whole bodies, headers, partial sections, Gmail items and an expunged answer each land in their field."""
    ((uid, items),) = parsed(line, literal).items()
    assert fetched_message(uid, items) == expected


def test_expunged_answer_is_recognised():
    """Dovecot's answer for a UID expunged after the SEARCH (BODY[] NIL, size 0) reads as expunged."""
    assert FetchedMessage(uid=1, size=0).expunged
    assert not FetchedMessage(uid=1, size=0, body=b"").expunged


def test_unreadable_items_cost_only_themselves():
    """A junk size, an INTERNALDATE that overflows in UTC and a wrong-shaped BODYSTRUCTURE become defects."""
    late = dt.datetime(9999, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-1)))
    message = fetched_message(3, {b"RFC822.SIZE": b"junk", b"INTERNALDATE": late, b"BODYSTRUCTURE": 5,
                                  b"BODY[]": b"x"})
    assert (message.size, message.internal_date, message.parts, message.body) == (None, None, (), b"x")
    assert [d.split(":")[0] for d in message.defects] == [
        "unreadable RFC822.SIZE", "unreadable INTERNALDATE", "unreadable BODYSTRUCTURE"]


def test_a_large_message_gets_its_text_parts_from_a_second_fetch():
    """BODYSTRUCTURE parts, then the partial section of the text part merged into the same record."""
    structure = parsed(b'1 (UID 5 BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 3 1)'
                       b'("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 900) "MIXED"))')
    first = fetched_messages(structure)[5]
    assert [(p.section, p.content_type) for p in first.parts] == [("1", "text/plain"), ("2", "application/pdf")]
    merged = first.with_sections(FetchedMessage(uid=5, sections=(("1", b"abc"),)))
    assert merged.section("1") == b"abc" and merged.parts == first.parts
