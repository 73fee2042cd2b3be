"""Telling an operator that IMAP_MAILBOX does not exist, and what they may have meant.

A missing folder is a configuration error, not a passing one (issue 9 §8): retrying it
forever under systemd helps nobody. The message lists the server's folders closest to the
name and the hierarchy separator, since "Archive/2024" on one server is "Archive.2024" on
another (Cyrus), and says the setting takes the Unicode name (imapclient encodes it to
modified UTF-7, RFC 3501 §5.1.3).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from email_ingestion.common.errors import MailboxNotFoundError

# RFC 5530 [NONEXISTENT] and [CANNOT] (a name the server cannot have, e.g. the wrong
# separator); the texts of servers that predate them (Cyrus, Exchange, Gmail).
_MISSING = re.compile(r"\[NONEXISTENT\]|\[CANNOT\]|mailbox (?:does ?n[o']t exist|not found)|unknown mailbox|"
                      r"no such (?:mailbox|folder)|folder (?:does ?n[o']t exist|not found)|"
                      r"(?:invalid|not allowed in) mailbox name", re.I)
_SERVER_TEXT_CHARS = 120
SUGGESTIONS = 5
LISTED = 10  # folders named when none is close


def names_missing_mailbox(server_text: str) -> bool:
    return _MISSING.search(server_text) is not None


def mailbox_not_found(mailbox: str, folders: Sequence[tuple[Any, Any, Any]],
                      server_text: str = "") -> MailboxNotFoundError:
    """The error for `mailbox`, given the server's LIST answer (flags, separator, name)."""
    names = [str(name) for _, _, name in folders]
    separators = sorted({_text(sep) for _, sep, _ in folders if sep})
    close = _close_names(mailbox, names)
    shown = ", ".join(names[:LISTED]) + (", ..." if len(names) > LISTED else "")
    hint = f"folders with close names: {', '.join(close)}" if close else f"the server's folders: {shown}"
    separator = f"; hierarchy separator {' or '.join(repr(s) for s in separators)}" if separators else ""
    said = f" (server: {_server_reason(server_text)})" if server_text else ""
    return MailboxNotFoundError(
        f"invalid setting IMAP_MAILBOX: the server has no folder {mailbox!r}{said}; {hint}{separator}; "
        "give the folder's name as the server lists it, in plain Unicode")


def _server_reason(text: str) -> str:
    found = _MISSING.search(text)
    start = found.start() if found else 0
    return " ".join(text[start:start + _SERVER_TEXT_CHARS].split()).rstrip("'\"")


def _close_names(mailbox: str, names: list[str]) -> list[str]:
    def key(name: str) -> str:
        return re.sub(r"[./\\]", "/", name).casefold()
    by_key = {key(name): name for name in names}
    wanted = key(mailbox)
    exact = [by_key[wanted]] if wanted in by_key else []
    leaf = [name for name in names if key(name).rsplit("/", 1)[-1] == wanted.rsplit("/", 1)[-1]]
    fuzzy = [by_key[k] for k in difflib.get_close_matches(wanted, list(by_key), n=SUGGESTIONS, cutoff=0.6)]
    return list(dict.fromkeys(exact + leaf + fuzzy))[:SUGGESTIONS]


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
