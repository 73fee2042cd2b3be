"""One spelling per IMAP folder, so that one folder is one mailbox identity (issue 18 §5).

Two spellings name the same folder on every server:
- `INBOX` in any case (RFC 3501 §5.1: "INBOX" is case-insensitive); other names are
  compared as given, as the server's LIST gives them (Dovecot, Cyrus and Gmail are
  case-sensitive for them);
- the modified UTF-7 wire form of a name (RFC 3501 §5.1.3, `Entw&APw-rfe`) and its Unicode
  form (`Entwürfe`): the settings take the Unicode form, and imapclient encodes it.

A name is read as modified UTF-7 only when it is the canonical encoding of a name holding
a non-ASCII character, so an ASCII name with a plain `&` ("R&D", "R&-D") stays as written.
Special-use names (RFC 6154, such as `\\All`) are not folder names: they pass unchanged.
"""

from __future__ import annotations

from imapclient import imap_utf7

INBOX = "INBOX"


def canonical_folder(name: str) -> str:
    """The one spelling of the folder `name` designates."""
    if name.upper() == INBOX:
        return INBOX
    return _from_modified_utf7(name)


def _from_modified_utf7(name: str) -> str:
    if "&" not in name or not name.isascii():
        return name
    try:
        decoded = str(imap_utf7.decode(name.encode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return name  # not modified UTF-7 ("R&D"): a plain name
    if decoded.isascii() or imap_utf7.encode(decoded) != name.encode("ascii"):
        return name  # "&-" escapes or a non-canonical encoding: take the name as written
    return decoded
