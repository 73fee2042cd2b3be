"""What can still be read from a message the parser gave up on (issue 9).

The header block is split by hand (linear, capped) and each field is decoded on its own,
so one field that cannot be decoded costs that field only. Used for degraded payloads:
whatever went wrong, the message still goes out with every header that could be read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from email_ingestion.mail.decode import decode_addresses, decode_header_value
from email_ingestion.mail.parse import KEPT_HEADERS, ParsedMessage, parse_date

SALVAGE_HEADER_BYTES = 262_144  # more header than this is not mail
_HEADER_VALUE_CHARS = 2000

T = TypeVar("T")


def raw_headers(raw: bytes) -> dict[str, str]:
    """Lower-cased name -> first value, unfolded; 8-bit bytes kept as surrogate escapes
    (as compat32 keeps them), for decode.py to repair."""
    block = raw[:SALVAGE_HEADER_BYTES]
    for end in (block.find(b"\r\n\r\n"), block.find(b"\n\n")):
        if end != -1:
            block = block[:end]
            break
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    used = 0  # characters kept for `current`, each line counting at least one: linear in the block
    for line in block.decode("ascii", "surrogateescape").replace("\r", "").split("\n"):
        if line[:1] in (" ", "\t"):
            if current is not None and used < SALVAGE_HEADER_BYTES:
                current.append(line.strip())
                used += len(current[-1]) + 1
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        current = None
        if colon and name and name not in fields:
            current = fields[name] = [value.strip()]
            used = len(value)
    # Whole values: decode.py caps them itself, and an address list must be cut between
    # addresses, never inside one (issue 18).
    return {name: " ".join(part for part in parts if part) for name, parts in fields.items()}


def salvage(raw: bytes) -> ParsedMessage:
    """The header fields of `raw`, each decoded separately; never raises."""
    fields = raw_headers(raw) if raw else {}
    defects: list[str] = []

    def get(name: str) -> str | None:
        return fields.get(name.lower())

    def each(name: str, decode: Callable[[], T], default: T) -> T:
        try:
            return decode()
        except Exception as exc:  # noqa: BLE001 - one field lost, not the message
            defects.append(f"undecodable {name}: {type(exc).__name__}")
            return default

    def addresses(name: str) -> list[tuple[str, str]]:
        return each(name, lambda: decode_addresses(get(name), defects), [])

    def text(name: str) -> str | None:
        return each(name, lambda: decode_header_value(get(name), defects), get(name))

    from_list = addresses("From")
    headers = {name: value for name in KEPT_HEADERS if (value := text(name))}
    message_id = headers.get("Message-ID")
    return ParsedMessage(
        message_id=message_id.strip() if message_id else None,
        from_=from_list[0] if from_list else None,
        to=addresses("To"), cc=addresses("Cc"), reply_to=addresses("Reply-To"),
        subject=text("Subject"),
        date=each("Date", lambda: parse_date(get("Date"), defects), None),
        headers={name: value[:_HEADER_VALUE_CHARS] for name, value in headers.items()},
        body_truncated=True,
        defects=defects,
        identity=_identity(get),
    )


def _identity(get: Callable[[str], str | None]) -> str:
    # The same shape as parse.py's identity, so a degraded message keeps its fingerprint.
    def norm(name: str) -> str:
        return " ".join(str(get(name) or "").split())
    return norm("Message-ID") or "|".join(norm(h) for h in ("Date", "From", "Subject"))
