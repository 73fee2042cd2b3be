"""Messages crafted to break a parser (issue 9), one per kind of failure, for tests.

Each is legal enough for an IMAP server to store. Builders, not constants: nothing big is
made at import.
"""

from __future__ import annotations

# Codecs that are not text encodings, or that raise on ordinary bytes.
NON_TEXT_CODECS = ("base64", "hex", "zlib", "rot13", "uu", "quopri", "idna", "undefined", "bz2",
                   "punycode", "unicode_escape", "raw_unicode_escape")


def _message(headers: list[bytes], body: bytes = b"body\r\n") -> bytes:
    return b"\r\n".join([b"From: hostile@example.org", *headers]) + b"\r\n\r\n" + body


def nested_multipart(depth: int) -> bytes:
    """MIME nested `depth` levels deep (RecursionError in the stdlib parser at ~1000)."""
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    return b"From: hostile@example.org\r\nSubject: deep-nesting-subject\r\n" + opening + b"Content-Type: text/plain\r\n\r\nx\r\n"


def hostile_messages() -> list[tuple[str, bytes]]:
    """(name, raw) for each crafted message."""
    cases = [
        ("utf7-lone-surrogate", _message([b"Subject: =?utf-7?q?+2D0-?="])),
        ("utf7-body", _message([b"Content-Type: text/plain; charset=utf-7"], b"+2D0- +AGEAYgBj-\r\n")),
        ("date-year-9999", _message([b"Date: Fri, 31 Dec 9999 23:30:00 -0100", b"Subject: late-date-subject"])),
        ("date-year-0", _message([b"Date: Fri, 31 Dec 0000 23:30:00 +0100"])),
        ("charset-nul", _message([b'Content-Type: text/plain; charset="utf\x008"'])),
        ("charset-2231-nul", _message([b"Content-Type: text/plain; charset*=utf\x008''x"])),
        ("nested-1000", nested_multipart(1000)),
        ("to-folded-spaces", _message([b"To: " + b"\r\n".join([b" " * 750] * 4) + b"x"])),
        ("to-many-ats", _message([b"To: " + b"@" * 20_000])),
        ("param-quotes", _message([b'Content-Type: multipart/mixed; a="' + b";" * 20_000 + b'"'])),
        ("html-unclosed-tags", _message([b"Content-Type: text/html"], b"<a " * 30_000)),
        ("subject-8bit-junk", _message([b"Subject: \xff\xfe\xed\xa0\x80 raw"])),
    ]
    for codec in NON_TEXT_CODECS:
        cases.append((f"subject-{codec}", _message([f"Subject: =?{codec}?q?abc?=".encode()])))
        cases.append((f"body-{codec}", _message([f"Content-Type: text/plain; charset={codec}".encode()], b"zz\r\n")))
    return cases
