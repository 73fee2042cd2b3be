"""IMAP command lines of the Gmail-like server: tokens in, response text out.

Only what the producer and the tests send: atoms, quoted strings, literals and
parenthesised lists (FETCH items, BODY.PEEK[HEADER.FIELDS (...)] with its brackets kept
in one atom).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Union

from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7

Token = Union[str, bytes, list["Token"]]  # atom / quoted as str, literal as bytes, list


_LITERAL_END = re.compile(rb"\{(\d+)\+?\}\r?\n?$")


def literal_size(line: bytes) -> int | None:
    match = _LITERAL_END.search(line)
    return int(match.group(1)) if match else None


def tokenize(data: bytes, literals: list[bytes]) -> list[Token]:
    """Parse a command (with its literals already cut out and replaced by {n} markers)."""
    stack: list[list[Token]] = [[]]
    i = 0
    pending = iter(literals)
    while i < len(data):
        c = data[i:i + 1]
        if c in (b" ", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            stack.append([])
            i += 1
        elif c == b")":
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif c == b'"':
            j, out = i + 1, bytearray()
            while data[j:j + 1] != b'"':
                if data[j:j + 1] == b"\\":
                    j += 1
                out += data[j:j + 1]
                j += 1
            stack[-1].append(out.decode("utf-8"))
            i = j + 1
        elif c == b"{":
            j = data.index(b"}", i)
            stack[-1].append(next(pending))
            i = j + 1
        else:
            j, depth = i, 0
            while j < len(data) and (depth or data[j:j + 1] not in (b" ", b")", b"(", b"\r", b"\n")):
                depth += {b"[": 1, b"]": -1}.get(data[j:j + 1], 0)
                j += 1
            stack[-1].append(data[i:j].decode("utf-8"))
            i = j
    return stack[0]


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_name(token: Token) -> str:
    """A mailbox argument (modified UTF-7 on the wire) as Unicode."""
    text = token.decode() if isinstance(token, bytes) else str(token)
    return "INBOX" if text.upper() == "INBOX" else decode_utf7(text.encode())


def wire_name(name: str) -> str:
    return quote(encode_utf7(name).decode())


def label_atom(label: str) -> str:
    # System labels go out as quoted strings with their backslash, as Gmail sends them.
    return quote(label) if label.startswith("\\") else wire_name(label)


def imap_date(value: dt.datetime) -> str:
    return value.strftime('"%d-%b-%Y %H:%M:%S +0000"')


@functools.lru_cache(maxsize=64)  # a SEARCH tests every message against the same set
def number_set(text: str, highest: int) -> NumberSet:
    return NumberSet(parse_set(text, highest))


def parse_set(text: str, highest: int) -> list[tuple[int, int]]:
    """A sequence set as (low, high) ranges; `*` is the highest (RFC 3501 §6.4.8: n:*
    matches the highest even when it is below n)."""
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        a = highest if low == "*" else int(low)
        b = a if not high else highest if high == "*" else int(high)
        ranges.append((min(a, b), max(a, b)))
    return ranges


class NumberSet:
    """A parsed sequence set; membership is O(1) (a FETCH of 500 listed UIDs against a
    10,000-message folder would otherwise test 5 million ranges)."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = [(low, high) for low, high in ranges if high - low >= 1000]
        self.values = {v for low, high in ranges if high - low < 1000 for v in range(low, high + 1)}

    def __contains__(self, value: int) -> bool:
        return value in self.values or any(low <= value <= high for low, high in self.ranges)


def in_set(value: int, ranges: list[tuple[int, int]] | NumberSet) -> bool:
    return value in (ranges if isinstance(ranges, NumberSet) else NumberSet(ranges))


def header_fields(raw: bytes, names: list[str]) -> bytes:
    """The header lines of `raw` whose field name is in `names`, and the blank line."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    wanted = {n.lower().encode() for n in names}
    out, keep = [], False
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        keep = line.split(b":", 1)[0].strip().lower() in wanted
        if keep:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out) + b"\r\n"


def header_block(raw: bytes) -> bytes:
    for end in (b"\r\n\r\n", b"\n\n"):
        if end in raw:
            return raw[:raw.index(end) + len(end)]
    return raw
