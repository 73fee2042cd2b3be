"""Turning the bytes of real-world mail into text without ever raising.

Mail lies about its charset, declares ones that don't exist, and puts raw 8-bit bytes in
headers. Every function here returns text (undecodable bytes become U+FFFD) and reports
what it had to repair as a defect string.
"""

from __future__ import annotations

import codecs
import email.utils
import re
from email.errors import HeaderParseError
from email.header import decode_header

# Labels seen in the wild that Python does not know, or knows under a narrower charset.
_ALIASES = {
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "gb2312": "gb18030", "gbk": "gb18030",
    "x-gbk": "gb18030", "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874",
    "x-mac-roman": "mac_roman", "macintosh": "mac_roman", "x-sjis": "shift_jis",
    "shift-jis": "shift_jis", "utf8": "utf-8", "x-user-defined": "cp1252",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "us-ascii": "ascii", "ansi_x3.4-1968": "ascii",
}
_NO_CHARSET = {"", "unknown-8bit", "x-unknown", "unknown", "default", "none", "charset"}
# Codecs Python knows that are no mail charset: they raise on ordinary bytes (idna,
# punycode, undefined) or turn backslashes into code points (the escape codecs). Byte-to-byte
# codecs (base64, zlib, rot13, uu, ...) are refused by `_is_text_encoding` below.
_NOT_MAIL_CHARSETS = {"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape",
                      "unicode_escape", "raw_unicode_escape", "mbcs", "oem"}
_CHARSET_CHARS = 64  # no real charset name is longer; longer labels are junk
# Linear-time caps (issue 9): one header value is cut to this many characters before the
# stdlib's encoded-word and address parsers see it (both are superlinear on hostile input).
HEADER_VALUE_MAX_CHARS = 16_384


def normalize_charset(charset: str | None) -> str | None:
    """The codec name to try for a declared charset, or None when none is usable."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    if label in _NO_CHARSET or len(label) > _CHARSET_CHARS or "\x00" in label:
        return None
    label = _ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_MAIL_CHARSETS:
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None, defects: list[str] | None = None,
                 final: bool = True) -> str:
    """Decode with the declared charset; if that fails or is unknown, UTF-8, then cp1252.

    ASCII and Latin-1 declarations are tried as UTF-8 first: mislabelled UTF-8 is far more
    common than real Latin-1 bytes that happen to form valid UTF-8 sequences.
    """
    codec = normalize_charset(charset)
    if charset and codec is None and charset.strip().lower() not in _NO_CHARSET:
        _note(defects, f"unknown charset {_printable(charset.strip()[:40])!r}")
    candidates = [c for c in (codec, "utf-8") if c]
    if codec in ("ascii", "cp1252"):
        candidates = ["utf-8", codec]
    for candidate in dict.fromkeys(candidates):
        try:
            return _decode(data, candidate, "strict", final)
        except (UnicodeError, ValueError, LookupError):
            continue
    fallback = codec if codec not in (None, "ascii", "utf-8") else "cp1252"
    _note(defects, f"undecodable bytes for charset {_printable(charset or 'none')!r}, replaced")
    try:
        return _decode(data, fallback, "replace", final)
    except (UnicodeError, ValueError, LookupError):
        return _decode(data, "cp1252", "replace", final)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _decode(data: bytes, codec: str, errors: str, final: bool) -> str:
    if final:
        return data.decode(codec, errors)
    # A partial fetch can cut a multi-byte sequence: drop the incomplete tail.
    return codecs.getincrementaldecoder(codec)(errors).decode(data, final=False)


def _note(defects: list[str] | None, text: str) -> None:
    if defects is not None and text not in defects:
        defects.append(text)


def unescape_8bit(value: str, defects: list[str] | None = None) -> str:
    """compat32 keeps raw 8-bit header bytes as surrogate escapes; decode them properly."""
    if value.isascii() or not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    _note(defects, "raw 8-bit bytes in header")
    return decode_bytes(value.encode("ascii", "surrogateescape"), None, defects)


def decode_header_value(value: str | None, defects: list[str] | None = None) -> str | None:
    """An unfolded, RFC 2047-decoded header value."""
    if value is None:
        return None
    text = str(value)
    if len(text) > HEADER_VALUE_MAX_CHARS:
        text = _capped(text, defects)
    text = unescape_8bit(text, defects)
    text = " ".join(text.replace("\r", "").split("\n")).strip()
    if "=?" not in text:
        return _clean(text, defects)
    try:
        parts = decode_header(text)
    except (HeaderParseError, ValueError, LookupError, AssertionError, UnicodeError):
        _note(defects, "malformed encoded-word in header")
        return _clean(text, defects)
    out = [chunk if isinstance(chunk, str) else decode_bytes(chunk, cs, defects) for chunk, cs in parts]
    return _clean("".join(out), defects)


def _capped(value: str, defects: list[str] | None) -> str:
    _note(defects, f"header longer than {HEADER_VALUE_MAX_CHARS} characters, cut")
    return value[:HEADER_VALUE_MAX_CHARS]


def _clean(text: str, defects: list[str] | None) -> str:
    if "\x00" in text:
        _note(defects, "NUL byte in header")
        text = text.replace("\x00", "\ufffd")
    return text


# The shapes most headers have ("addr", "Name <addr>", "\"Name\" <addr>"), parsed without the
# stdlib's general (and slow) address parser; anything else goes the long way.
# Linear by construction (issue 9: the old pattern backtracked cubically on runs of spaces):
# the text is stripped first, no two adjacent pieces can match the same character (a bare
# name cannot contain "<", a quoted one no '"', a local part no "@"), so the engine never
# has a second way to try.
_ADDR = r'[^<>\s,;:"()\\@]+@[^<>\s,;:"()\\]+'
_SIMPLE_ADDRESS = re.compile(rf'"([^"\\]*)"[ \t]*<({_ADDR})>|([^"<>,;:@()\\]*)<({_ADDR})>|({_ADDR})')


def decode_addresses(value: str | None, defects: list[str] | None = None) -> list[tuple[str, str]]:
    """(display name, address) pairs, display names decoded; never raises."""
    if not value:
        return []
    text = " ".join(unescape_8bit(str(value), defects).replace("\r", "").split("\n")).strip()
    if len(text) > HEADER_VALUE_MAX_CHARS:
        return _long_address_list(text, defects)
    return _address_list(text, defects)


def _address_list(text: str, defects: list[str] | None) -> list[tuple[str, str]]:
    simple = _SIMPLE_ADDRESS.fullmatch(text)
    if simple:
        quoted, quoted_address, bare_name, bare_address, lone = simple.groups()
        # An unquoted display name is a phrase of words: runs of white space between them
        # are one space (RFC 5322 §3.2.2 folding white space), as the general path gives.
        name = quoted if quoted is not None else " ".join((bare_name or "").split())
        return [(decode_header_value(name, defects) or "", quoted_address or bare_address or lone)]
    try:
        pairs = email.utils.getaddresses([text])
    except Exception:  # noqa: BLE001 - stdlib address parser raises assorted errors on junk
        _note(defects, "unparseable address header")
        return [("", text.strip()[:320])]
    out = []
    for name, address in pairs:
        if not name and not address:
            continue
        if not (_PLAUSIBLE_ADDRESS.fullmatch(address) or _explicit_local_address(address, text)):
            # The stdlib hands back whatever it could not parse as the address ("John" of
            # "John Smith", an encoded word, "@x.org"): never junk as an address (issue 18).
            _note(defects, "unparseable address header")
            continue
        out.append((decode_header_value(name, defects) or "", _clean(address, defects)))
    if not out and text.strip():
        _note(defects, "unparseable address header")
    return out


# local@domain: a local part quoted or without spaces, quotes or "@", and a domain without
# spaces or "@" (RFC 5322 §3.4.1; a domain literal [1.2.3.4] fits too).
_PLAUSIBLE_ADDRESS = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^\s"@]+)@[^\s@]+')


# A local part alone (`<MAILER-DAEMON>`, `root (Cron Daemon)`): real senders write these, and
# written so - in angle brackets, or followed by a comment - they are no guess. A bare word
# ("John" of "John Smith") stays unparsed. An encoded word is never an address.
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/?^_`{|}~.-]+")


def _explicit_local_address(address: str, text: str) -> bool:
    if not _ATOM.fullmatch(address) or address.startswith("=?"):
        return False
    quoted = re.escape(address)
    return bool(re.search(rf"<\s*{quoted}\s*>", text) or re.search(rf"(?:^|[\s,]){quoted}\s*\(", text))


# One token of an address list: a quoted string, a comment, an angle address, a comma, or a
# run of anything else. Each alternative is unambiguous (issue 18: linear on any length).
_ADDRESS_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\([^()]*\)?|<[^<>]*>?|,|[^",(<]+|[()<>]')
_ANGLE_ADDRESS = re.compile(rf"<\s*({_ADDR})\s*>")


def _long_address_list(text: str, defects: list[str] | None) -> list[tuple[str, str]]:
    """A header over HEADER_VALUE_MAX_CHARS (issue 18): cut between addresses, never inside
    one (a cut address is junk). The first address is always found, however long its
    display name (a 20,000-character encoded name is a known trick); when it cannot be
    found it is left out, with a defect."""
    _note(defects, f"header longer than {HEADER_VALUE_MAX_CHARS} characters, cut")
    out: list[tuple[str, str]] = []
    used = 0
    for item in _split_address_list(text):
        used += len(item) + 1
        if used > HEADER_VALUE_MAX_CHARS and out:
            break
        out += _address_list(item, defects) if len(item) <= HEADER_VALUE_MAX_CHARS else _long_address(item, defects)
        if used > HEADER_VALUE_MAX_CHARS:
            break
    return out


def _split_address_list(text: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    for token in _ADDRESS_TOKEN.findall(text):
        if token == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(token)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _long_address(item: str, defects: list[str] | None) -> list[tuple[str, str]]:
    """One address whose display name alone is over the cap: the address from its angle
    brackets, the name cut (and noted) before it is decoded."""
    angle = item.rfind("<")
    found = _ANGLE_ADDRESS.fullmatch(item[angle:].strip()) if angle >= 0 else None
    if found is None:
        _note(defects, "unparseable address header")
        return []
    name = item[:angle].strip()
    if name.startswith('"') and name.endswith('"') and len(name) >= 2:
        name = name[1:-1]
    return [(decode_header_value(name, defects) or "", found.group(1))]
