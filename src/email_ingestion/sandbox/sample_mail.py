"""Sample and deliberately broken messages for tests, the demo and benchmarks."""

from __future__ import annotations

import random

_WORDS = ("invoice order meeting report update shipment account review project deadline "
          "schedule budget contract delivery question answer").split()


def sample_message(index: int, body_bytes: int = 2500, subject: str | None = None, seed: int = 0) -> bytes:
    """A plain, valid ~3 KB message, different for each index."""
    rng = random.Random(seed * 1_000_003 + index)
    words = []
    size = 0
    while size < body_bytes:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    body = "\r\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
    subject = subject or f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} #{index}"
    return (
        f"From: Sender {index} <sender{index}@example.org>\r\n"
        f"To: Alice <alice@example.com>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <msg-{seed}-{index}@example.org>\r\n"
        f"Date: Mon, 02 Jan 2023 10:{index % 60:02d}:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


# Each: (name, raw bytes). All must come out as payloads, none may stop the producer.
BROKEN_MESSAGES: list[tuple[str, bytes]] = [
    ("unknown charset", b"From: a@example.org\r\nSubject: x\r\nMessage-ID: <b1@x>\r\n"
     b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nCaf\xe9 cr\xe8me\r\n"),
    ("lying charset", b"From: a@example.org\r\nSubject: x\r\nMessage-ID: <b2@x>\r\n"
     b"Content-Type: text/plain; charset=us-ascii\r\n\r\n\xe6\x97\xa5\xe6\x9c\xac \xff\xfe\r\n"),
    ("8-bit headers", b"From: J\xc3\xbcrgen <j@example.org>\r\nSubject: Gr\xfc\xdfe \xc3\xa9t\xc3\xa9\r\n"
     b"Message-ID: <b3@x>\r\n\r\nbody\r\n"),
    ("NUL bytes", b"From: a@example.org\r\nSubject: nul\x00here\r\nMessage-ID: <b4@x>\r\n\r\nbefore\x00after\r\n"),
    ("no headers at all", b"\r\njust a body, no header block\r\n"),
    ("missing boundary", b"From: a@example.org\r\nMessage-ID: <b6@x>\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: multipart/mixed\r\n\r\n--zzz\r\nContent-Type: text/plain\r\n\r\nlost\r\n--zzz--\r\n"),
    ("unterminated multipart", b"From: a@example.org\r\nMessage-ID: <b7@x>\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n"),
    ("bad base64", b"From: a@example.org\r\nMessage-ID: <b8@x>\r\nContent-Type: text/plain; charset=utf-8\r\n"
     b"Content-Transfer-Encoding: base64\r\n\r\n!!!not*base64###\r\n"),
    ("bad encoded-word", b"From: =?utf-8?B?###?= <a@example.org>\r\nSubject: =?no-such?Q?x=ZZ?= =?utf-8?q?ok?=\r\n"
     b"Message-ID: <b9@x>\r\n\r\nbody\r\n"),
    ("garbage date and addresses", b"From: <<<@@@>>>\r\nTo: ,,,;;;\"\r\nDate: not a date at all\r\n"
     b"Message-ID: <b10@x>\r\n\r\nbody\r\n"),
    ("rfc2231 filename", b"From: a@example.org\r\nMessage-ID: <b11@x>\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nhi\r\n--q\r\n"
     b"Content-Type: application/pdf\r\nContent-Disposition: attachment;\r\n filename*0*=utf-8''r%C3%A9sum;\r\n"
     b" filename*1*=%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--q--\r\n"),
    ("html only, bad QP", b"From: a@example.org\r\nMessage-ID: <b12@x>\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
     b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>Caf=E9 =ZZ broken<script>x()</script></p>=\r\n"),
]
