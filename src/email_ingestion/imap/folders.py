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
                      r"(?:invalid|not allowed in) mailbox name|"
                      r"(?:not |non-?|un)selectable|can ?not (?:be )?select", re.I)  # a \\Noselect folder
_SERVER_TEXT_CHARS = 120
SUGGESTIONS = 5
LISTED = 10  # folders named when none is close


def names_missing_mailbox(server_text: str) -> bool:
    return _MISSING.search(server_text) is not None


def mailbox_not_found(mailbox: str, folders: Sequence[tuple[Any, Any, Any]],
                      server_text: str = "") -> MailboxNotFoundError:
    """The error for `mailbox`, given the server's LIST answer (flags, separator, name)."""
    said = f" (server: {_server_reason(server_text)})" if server_text else ""
    listed = next((entry for entry in folders if _same_name(str(entry[2]), mailbox)), None)
    if listed is not None and _unselectable(listed[0]):
        return _cannot_be_selected(str(listed[2]), _text(listed[1]) if listed[1] else "", folders, said)
    names = [str(name) for _, _, name in folders]
    separators = sorted({_text(sep) for _, sep, _ in folders if sep})
    close = _close_names(mailbox, names)
    shown = ", ".join(names[:LISTED]) + (", ..." if len(names) > LISTED else "")
    hint = f"folders with close names: {', '.join(close)}" if close else f"the server's folders: {shown}"
    separator = f"; hierarchy separator {' or '.join(repr(s) for s in separators)}" if separators else ""
    return MailboxNotFoundError(
        f"invalid setting IMAP_MAILBOX: the server has no folder {mailbox!r}{said}; {hint}{separator}; "
        "give the folder's name as the server lists it, in plain Unicode")


def _cannot_be_selected(name: str, separator: str, folders: Sequence[tuple[Any, Any, Any]],
                        said: str) -> MailboxNotFoundError:
    """A \\Noselect folder (Gmail's [Gmail], a Dovecot parent made implicitly): it exists
    but only holds other folders (RFC 3501 §7.2.2), so name the ones that can be selected."""
    prefix = name + separator if separator else None
    children = sorted(str(n) for flags, _, n in folders
                      if prefix and str(n).startswith(prefix) and not _unselectable(flags))
    shown = ", ".join(children[:LISTED]) + (", ..." if len(children) > LISTED else "")
    hint = f"its selectable folders: {shown}" if children else "it has no selectable folders"
    return MailboxNotFoundError(
        f"invalid setting IMAP_MAILBOX: the folder {name!r} cannot be selected (\\Noselect: it only holds "
        f"other folders){said}; {hint}")


def _unselectable(flags: Any) -> bool:
    # RFC 3501 \Noselect; RFC 5258 \NonExistent implies it.
    return any(_text(flag).lower() in ("\\noselect", "\\nonexistent") for flag in flags or ())


def _same_name(listed: str, wanted: str) -> bool:
    # INBOX is case-insensitive (RFC 3501 §5.1); every other name is as the server lists it.
    return listed == wanted or (listed.upper() == "INBOX" and wanted.upper() == "INBOX")


# imaplib quotes the server's words as Python prints them: [b'...'] or b'...'.
_OPENING = re.compile(r"""\[?b['"]""")
_CLOSING = re.compile(r"""['"]\]?$""")


def _server_reason(text: str) -> str:
    """The server's own words, from the part that says the folder is missing, without the
    bytes-and-list quoting imaplib wraps them in (issue 18: a stray `']` otherwise)."""
    found = _MISSING.search(text)
    start = found.start() if found else 0
    reason = " ".join(text[start:].split())
    if _OPENING.search(text[:start] if found else text[:3]):
        reason = _CLOSING.sub("", _OPENING.sub("", reason, count=1) if not found else reason)
    return reason[:_SERVER_TEXT_CHARS].strip()


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
