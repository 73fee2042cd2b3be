"""Raw RFC 5322 bytes -> the parsed fields of a payload. Never raises on bad mail.

We parse with the `compat32` policy on purpose: `policy.default` builds rich header
objects and parses about 13x slower (~1,200 vs ~16,000 msg/s here), which would make
parsing, not the network, the limit of a first sync. The decoding `policy.default` would
have done (RFC 2047 words, RFC 2231 parameters, charsets) is done in `decode.py`, with
fallbacks instead of exceptions.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email
import email.utils
import quopri
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from html import unescape

from email_ingestion.mail.decode import decode_addresses, decode_bytes, decode_header_value
from email_ingestion.mail.mime import message_from_bytes

BODY_TEXT_CHARS = 2000
HTML_PREVIEW_CHARS = 500
KEPT_HEADERS = ("Message-ID", "In-Reply-To", "References", "Content-Type", "List-Id")
_HEADER_VALUE_CHARS = 2000


@dataclass
class AttachmentInfo:
    filename: str | None
    content_type: str
    size: int


@dataclass
class ParsedMessage:
    message_id: str | None
    from_: tuple[str, str] | None
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]
    subject: str | None
    date: str | None
    headers: dict[str, str]
    body_text: str = ""
    body_html_preview: str = ""
    body_truncated: bool = False
    attachments: list[AttachmentInfo] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # Raw Message-ID, or Date|From|Subject without one: what dedup fingerprints are made of.
    identity: str = ""


@dataclass
class TextPart:
    """A text part fetched separately (large messages): still transfer-encoded."""

    content_type: str
    charset: str | None
    encoding: str
    data: bytes
    complete: bool


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a whole message."""
    return _parse_single_part(raw) or _parse_full(raw)


def _parse_single_part(raw: bytes) -> ParsedMessage | None:
    """Fast path for the common single-part text message: parse only the header block and
    decode the body directly, skipping the feedparser's line-by-line walk of the body.
    None when the message needs the full parser (multipart, attachments, odd headers)."""
    cut = _header_end(raw)
    if cut is None:
        return None
    msg = message_from_bytes(raw[:cut])
    if msg.defects or msg.get_payload() or msg.get_content_type() not in ("text/plain", "text/html") \
            or (msg.get_content_disposition() or "inline") != "inline" or msg.get_param("name") is not None:
        return None
    parsed = parse_headers(msg)
    if b"\x00" in raw:
        parsed.defects.append("NUL bytes in message")
    encoding = str(msg.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    body = decode_bytes(_transfer_decode(raw[cut:], encoding, parsed.defects, True),
                        _charset(msg, parsed.defects), parsed.defects)
    is_text = msg.get_content_type() == "text/plain"
    _set_bodies(parsed, body if is_text else "", "" if is_text else body, truncated=False)
    return parsed


def _header_end(raw: bytes) -> int | None:
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    if crlf != -1 and (lf == -1 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf != -1 else None


def _parse_full(raw: bytes) -> ParsedMessage:
    msg = message_from_bytes(raw)
    parsed = parse_headers(msg)
    if b"\x00" in raw:
        parsed.defects.append("NUL bytes in message")
    text, html = _collect_parts(msg, parsed)
    _set_bodies(parsed, text, html, truncated=False)
    _collect_defects(msg, parsed.defects)
    return parsed


def parse_partial(header: bytes, parts: list[TextPart], attachments: list[AttachmentInfo],
                  size: int) -> ParsedMessage:
    """Build the fields of a large message from its header and partially fetched text parts."""
    msg = message_from_bytes(header)
    parsed = parse_headers(msg)
    parsed.attachments = attachments
    texts = {"text/plain": "", "text/html": ""}
    for part in parts:
        if not texts.get(part.content_type):
            body = _transfer_decode(part.data, part.encoding, parsed.defects, part.complete)
            texts[part.content_type] = decode_bytes(body, part.charset, parsed.defects, final=part.complete)
    parsed.defects.append(f"large message ({size} bytes): body from a partial fetch")
    _set_bodies(parsed, texts["text/plain"], texts["text/html"], truncated=True)
    return parsed


def parse_headers(msg: Message) -> ParsedMessage:
    defects: list[str] = []
    get = _header_getter(msg)
    from_list = decode_addresses(get("From"), defects)
    message_id = decode_header_value(get("Message-ID"), defects)
    for name, value in (("From", from_list), ("Message-ID", message_id), ("Date", get("Date"))):
        if not value:
            defects.append(f"missing {name}")
    headers = {}
    for name in KEPT_HEADERS:
        value = decode_header_value(get(name), defects)
        if value is not None:
            headers[name] = value[:_HEADER_VALUE_CHARS]
    return ParsedMessage(
        message_id=message_id.strip() if message_id else None,
        from_=from_list[0] if from_list else None,
        to=decode_addresses(get("To"), defects),
        cc=decode_addresses(get("Cc"), defects),
        reply_to=decode_addresses(get("Reply-To"), defects),
        subject=decode_header_value(get("Subject"), defects),
        date=parse_date(get("Date"), defects),
        headers=headers,
        defects=defects,
        identity=_identity(get),
    )


HeaderGetter = Callable[[str], "str | None"]


def _identity(get: HeaderGetter) -> str:
    def norm(name: str) -> str:
        return " ".join(str(get(name) or "").split())
    return norm("Message-ID") or "|".join(norm(h) for h in ("Date", "From", "Subject"))


def _header_getter(msg: Message) -> HeaderGetter:
    # raw_items() keeps 8-bit bytes as surrogate escapes; msg.get() would wrap them in
    # Header objects whose str() loses them.
    first: dict[str, str] = {}
    for name, value in msg.raw_items():
        first.setdefault(name.lower(), value)
    return lambda name: first.get(name.lower())


def parse_date(value: str | None, defects: list[str]) -> str | None:
    """The Date header as ISO 8601 UTC, or None."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(decode_header_value(value) or "")
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        # Year 9999 with a negative offset is past datetime.max in UTC: OverflowError.
        return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("unparseable Date")
        return None


def _collect_parts(msg: Message, parsed: ParsedMessage) -> tuple[str, str]:
    text, html = "", ""
    for part in _leaf_parts(msg):
        content_type = part.get_content_type()
        filename = _filename(part, parsed.defects)
        disposition = (part.get_content_disposition() or "").lower()
        is_body = content_type in ("text/plain", "text/html") and disposition != "attachment" \
            and not (filename and disposition != "inline")
        if is_body and content_type == "text/plain" and not text:
            text = _part_text(part, parsed.defects)
        elif is_body and content_type == "text/html" and not html:
            html = _part_text(part, parsed.defects)
        elif not is_body:
            parsed.attachments.append(AttachmentInfo(filename, content_type, _payload_size(part)))
    return text, html


def _leaf_parts(msg: Message) -> Iterator[Message]:
    """Leaf parts in order; an attached message/rfc822 counts as one attachment."""
    stack = [msg]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if part.is_multipart() and part.get_content_type() != "message/rfc822" and isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        else:
            yield part


def _filename(part: Message, defects: list[str]) -> str | None:
    try:
        name = part.get_filename()
    except (ValueError, LookupError, TypeError):
        defects.append("malformed filename parameter")
        return None
    if name is None:
        return None
    return decode_header_value(str(name), defects)


def _payload_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    if part.is_multipart():
        return part.as_bytes() if part.get_content_type() == "message/rfc822" else b""
    return str(payload or "").encode("utf-8", "surrogateescape")


def _payload_size(part: Message) -> int:
    try:
        return len(_payload_bytes(part))
    except Exception:  # noqa: BLE001 - a broken part still gets listed
        return 0


def _part_text(part: Message, defects: list[str]) -> str:
    try:
        data = _payload_bytes(part)
    except Exception:  # noqa: BLE001
        defects.append("undecodable transfer encoding")
        data = str(part.get_payload()).encode("utf-8", "surrogateescape")
    return decode_bytes(data, _charset(part, defects), defects)


def _charset(part: Message, defects: list[str]) -> str | None:
    # compat32 decodes RFC 2231 charset parameters with the declared codec itself, and
    # lets ValueError (a NUL in the name) and non-text codecs escape.
    try:
        return part.get_content_charset()
    except (ValueError, LookupError, UnicodeError, TypeError):
        defects.append("malformed charset parameter")
        return None


def _transfer_decode(data: bytes, encoding: str, defects: list[str], complete: bool) -> bytes:
    encoding = encoding.lower()
    try:
        if encoding == "base64":
            compact = b"".join(data.split())
            if not complete:
                compact = compact[: len(compact) // 4 * 4]
            return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))
        if encoding == "quoted-printable":
            if not complete and b"=" in data[-3:]:
                data = data[: data.rindex(b"=", len(data) - 3)]
            return quopri.decodestring(data)
    except (binascii.Error, ValueError):
        defects.append(f"bad {encoding} content")
    return data


def _set_bodies(parsed: ParsedMessage, text: str, html: str, truncated: bool) -> None:
    if not text and html:
        text = html_to_text(html)
    text = text.replace("\x00", "\ufffd").strip()
    html = html.replace("\x00", "\ufffd").strip()
    parsed.body_text = text[:BODY_TEXT_CHARS]
    parsed.body_html_preview = html[:HTML_PREVIEW_CHARS]
    parsed.body_truncated = truncated or len(text) > BODY_TEXT_CHARS


def _collect_defects(msg: Message, defects: list[str]) -> None:
    for part in msg.walk():
        for defect in getattr(part, "defects", []):
            name = type(defect).__name__
            if name not in defects:
                defects.append(name)


# A tag is "<" up to the next ">" with no "<" inside: each match attempt stops at the next
# "<", so scanning is linear (html.parser is quadratic on runs of unclosed tags, issue 9).
# Possessive: with plain `*` an unclosed "<" + n letters was tried as every split of the
# letters between the name and the rest, O(n^2) in one C call that holds the GIL, which
# the helper's CPU watchdog cannot interrupt (40,000 letters: 6 s).
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*+)?[^<>]*+>")
_SKIP = ("script", "style", "head", "title")
_BREAKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6"}


def html_to_text(html: str) -> str:
    """Readable text of an HTML body, for messages that have no text/plain part."""
    html = html[: BODY_TEXT_CHARS * 20]
    lowered = html.lower()
    chunks: list[str] = []
    pos = 0
    while (tag := _TAG.search(html, pos)) is not None:
        chunks.append(html[pos:tag.start()])
        closing, name = tag.group(1), (tag.group(2) or "").lower()
        pos = tag.end()
        if name in _BREAKS:
            chunks.append("\n")
        elif name in _SKIP and not closing:
            end = lowered.find(f"</{name}", pos)
            pos = len(html) if end == -1 else end
    chunks.append(html[pos:])
    text = unescape("".join(chunks))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)
