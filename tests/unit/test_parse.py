"""The parser on deliberately broken mail and on the public corpus: never raises, always
yields a payload that validates."""

from __future__ import annotations

import datetime as dt

import pytest

from email_ingestion.common.payload import EmailPayload
from email_ingestion.imap.fetched import fetched_message
from email_ingestion.mail.parse import TextPart, html_to_text, parse_date, parse_message, parse_partial
from email_ingestion.producer.payloads import PayloadBuilder
from email_ingestion.sandbox.sample_mail import BROKEN_MESSAGES, sample_message
from tests.conftest import CORPUS


def to_payload(raw: bytes) -> EmailPayload:
    """The whole pure build path: raw FETCH data -> Emission -> JSON -> EmailPayload."""
    message = fetched_message(1, {b"BODY[]": raw, b"FLAGS": (b"\\Seen",), b"RFC822.SIZE": len(raw)})
    (emission,) = PayloadBuilder(account="a@x", mailbox="INBOX").build([message], 7, "c")
    return EmailPayload.from_json(emission.payload)


@pytest.mark.parametrize(("name", "raw"), BROKEN_MESSAGES, ids=[n for n, _ in BROKEN_MESSAGES])
def test_broken_message_yields_valid_payload(name, raw):
    """Each deliberately broken sample message builds a payload that validates, with a str body."""
    payload = to_payload(raw)
    assert payload.uid == 1
    assert isinstance(payload.body_text, str)


def test_defects_are_listed():
    """Defects name a missing boundary or From, and a present Message-ID is not reported missing."""
    parsed = parse_message(dict(BROKEN_MESSAGES)["missing boundary"])
    assert "missing Message-ID" not in parsed.defects
    assert any("Boundary" in d for d in parsed.defects)
    assert "missing From" in parse_message(b"\r\nbody").defects


def test_attachment_and_alternative_parts():
    """An alternative gives the plain body and HTML preview; attachments list filename, type, size."""
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    msg = MIMEMultipart("mixed")
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("plain body", "plain", "utf-8"))
    alt.attach(MIMEText("<b>html body</b>", "html", "utf-8"))
    msg.attach(alt)
    msg.attach(MIMEApplication(b"%PDF-1.4 data", "pdf", Name="doc.pdf"))
    parsed = parse_message(msg.as_bytes())
    assert parsed.body_text == "plain body"
    assert parsed.body_html_preview == "<b>html body</b>"
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [("doc.pdf", "application/pdf", 13)]


def test_body_text_is_capped_and_flagged():
    """Body text is capped at 2000 characters and body_truncated is set."""
    parsed = parse_message(sample_message(1, body_bytes=10_000))
    assert len(parsed.body_text) == 2000 and parsed.body_truncated


@pytest.mark.parametrize(("value", "expected"), [
    ("Mon, 02 Jan 2023 10:00:00 +0100", "2023-01-02T09:00:00Z"),
    ("2 Jan 2023 10:00:00 -0000", "2023-01-02T10:00:00Z"),
    ("garbage", None),
    (None, None),
])
def test_parse_date(value, expected):
    """Date headers normalise to UTC ISO 8601 with Z; unparseable or missing dates give None."""
    assert parse_date(value, []) == expected


def test_partial_base64_cut_mid_sequence_decodes_what_it_has():
    """A base64 text part cut mid-sequence decodes the text it has and is flagged truncated."""
    import base64
    text = "héllo wörld " * 50
    encoded = base64.encodebytes(text.encode())[:301]
    parsed = parse_partial(b"From: a@b.c\r\n\r\n", [TextPart("text/plain", "utf-8", "base64", encoded, False)], [], 10**7)
    assert parsed.body_text.startswith("héllo wörld")
    assert parsed.body_truncated


def test_html_to_text_skips_scripts():
    """html_to_text drops script contents, breaks lines at blocks and unescapes entities."""
    assert html_to_text("<p>Hi<script>evil()</script></p><p>there &amp; you</p>") == "Hi\nthere & you"


@pytest.mark.skipif(not CORPUS.exists(), reason="shared corpus not present")
def test_whole_corpus_parses_into_valid_payloads():
    """Every message of the public corpus builds a valid payload whose date, if any, is ISO 8601."""
    files = sorted(CORPUS.rglob("*.eml"))
    assert len(files) > 100
    for path in files:
        payload = to_payload(path.read_bytes())
        assert payload.date is None or dt.datetime.fromisoformat(payload.date.replace("Z", "+00:00"))
