"""The identity of a message that survives a UIDVALIDITY change: its dedup fingerprint.

After a UIDVALIDITY change UIDs mean nothing, so a re-synchronisation recognises messages
already emitted by content alone. Gmail has a stable id (X-GM-MSGID). Elsewhere the
fingerprint is a hash of the raw Message-ID, Date, From and Subject header values plus
RFC822.SIZE: all of them travel with the message when a client or a migration tool copies
a folder, unlike INTERNALDATE, which many do not preserve (issue 9 §3).

It is computed from raw header bytes, never from decoded fields, so the whole message
(when it is emitted) and the header-only FETCH of a re-sync give the same answer, and a
change in the decoders can never change a stored fingerprint.

False merges: two distinct messages with the same four header values and the same size
(a list re-sending an identical message, the same message delivered twice) share a
fingerprint; during a re-sync the second one is taken for already emitted.
"""

from __future__ import annotations

import hashlib
import re

# What a re-sync fetches per message: the header fields, nothing else of the content.
IDENTITY_HEADERS = ("Message-ID", "Date", "From", "Subject")
HEADER_FIELDS_ITEM = f"BODY.PEEK[HEADER.FIELDS ({' '.join(h.upper() for h in IDENTITY_HEADERS)})]"

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# A field of the header block: its name at a line start, its value with continuation lines.
_FIELD = re.compile(rb"^(" + b"|".join(h.encode() for h in IDENTITY_HEADERS) + rb"):(.*(?:\r?\n[ \t].*)*)",
                    re.M | re.I)


def header_block(raw: bytes) -> bytes:
    """The header section of a message (everything before the first empty line)."""
    if raw.startswith((b"\r\n", b"\n")):
        # An empty first line: no header at all, as the server's HEADER.FIELDS answer says (a
        # search for two line ends in a row would take the lines after it for the header).
        return b""
    match = _HEADER_END.search(raw)
    return raw if match is None else raw[:match.start()]


def identity_fields(header: bytes) -> dict[bytes, bytes]:
    """First occurrence of each identity header, unfolded, whitespace runs collapsed."""
    found: dict[bytes, bytes] = {}
    for match in _FIELD.finditer(header_block(header)):
        name = match.group(1).lower()
        if name not in found:
            found[name] = b" ".join(match.group(2).split())
    return found


def fingerprint(header: bytes, size: int, gmail_msgid: str | None) -> str:
    """`gm:<X-GM-MSGID>` on Gmail, else `c:` + a hash of the identity headers and size.

    `header` may be the whole message, its header block, or the HEADER.FIELDS answer.
    """
    if gmail_msgid:
        return f"gm:{gmail_msgid}"
    fields = identity_fields(header)
    material = b"\n".join(fields.get(name.lower().encode(), b"") for name in IDENTITY_HEADERS)
    digest = hashlib.sha256(material + b"\n" + str(size).encode()).hexdigest()
    return f"c:{digest[:32]}"


def legacy_fingerprint(header: bytes, internal_date: str | None, size: int) -> str:
    """The fingerprint versions before issue 9 stored (Message-ID or Date|From|Subject,
    INTERNALDATE and size): a re-sync also accepts it, so mail those versions emitted is not
    delivered again after an upgrade (as long as the copy kept its INTERNALDATE)."""
    fields = identity_fields(header)
    identity = fields.get(b"message-id") or b"|".join(fields.get(h, b"") for h in (b"date", b"from", b"subject"))
    text = identity.decode("ascii", "surrogateescape")
    digest = hashlib.sha256(f"{text}|{internal_date}|{size}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"h:{digest[:32]}"
