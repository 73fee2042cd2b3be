"""Which server folder a configured mailbox name means, and which Gmail label it shows.

A mailbox may be named by its SPECIAL-USE attribute (RFC 6154): `\\All`, `\\Sent`, `\\Junk`,
`\\Trash`, `\\Flagged`, `\\Drafts` (and Gmail's `\\Important`). It resolves through LIST to
the server's folder whatever its localised name: `[Gmail]/All Mail` for most Gmail
accounts, `[Google Mail]/All Mail` for some, `[Gmail]/Alle Nachrichten` in a German UI.

On Gmail a folder is a view of one label: INBOX of `\\Inbox`, `[Gmail]/Sent Mail` of
`\\Sent`, a user folder of its own name. Gmail may leave the selected folder's own label out
of X-GM-LABELS; `own_label` is what the producer adds back, so a message carries the same
labels whichever folder it was read from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from email_ingestion.common.errors import MailboxNotFoundError
from email_ingestion.imap.folders import mailbox_not_found

SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important")
# The X-GM-LABELS name of the system label a special-use folder shows (\All shows none).
_SYSTEM_LABELS = {"\\Sent": "\\Sent", "\\Drafts": "\\Draft", "\\Flagged": "\\Starred",
                  "\\Important": "\\Important", "\\Trash": "\\Trash", "\\Junk": "\\Spam"}
_GMAIL_PARENTS = ("[Gmail]/", "[Google Mail]/")


@dataclass(frozen=True)
class Folder:
    """A folder as LIST shows it: its name (Unicode) and attributes (`\\All`, `\\Noselect`, ...)."""

    name: str
    attrs: frozenset[str] = frozenset()


def is_special_use(configured: str) -> bool:
    return configured.startswith("\\")


def resolve(configured: str, listing: Sequence[tuple[Any, Any, Any]]) -> Folder:
    """The folder `configured` means, given the server's LIST answer (flags, separator, name).

    A special-use name must match exactly one attribute; any other name is taken as is."""
    folders = [Folder(str(name), frozenset(_text(flag) for flag in flags)) for flags, _, name in listing]
    if not is_special_use(configured):
        return next((f for f in folders if f.name == configured), Folder(configured))
    wanted = configured.casefold()
    found = [f for f in folders if wanted in {a.casefold() for a in f.attrs} and "\\Noselect" not in f.attrs]
    if not found:
        raise _no_special_use(configured, listing)
    return found[0]


def own_label(folder: Folder) -> str | None:
    """The Gmail label whose view `folder` is; None for All Mail and unknown [Gmail] folders."""
    if folder.name.upper() == "INBOX":
        return "\\Inbox"
    for attr in folder.attrs:
        if attr in _SYSTEM_LABELS:
            return _SYSTEM_LABELS[attr]
    if "\\All" in folder.attrs or folder.name.startswith(_GMAIL_PARENTS):
        return None
    return folder.name


def _no_special_use(configured: str, listing: Sequence[tuple[Any, Any, Any]]) -> MailboxNotFoundError:
    error = mailbox_not_found(configured, listing)
    return MailboxNotFoundError(
        f"invalid setting IMAP_MAILBOX: no folder of the server has the SPECIAL-USE attribute {configured} "
        f"(RFC 6154; known: {', '.join(SPECIAL_USE)}); {str(error).split('; ', 1)[-1]}")


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
