"""Telling an operator what is wrong with IMAP_MAILBOX (imap/folders.py), table-driven."""

from __future__ import annotations

import pytest

from email_ingestion.imap.folders import mailbox_not_found

GMAIL = [((b"\\HasNoChildren",), b"/", "INBOX"), ((b"\\HasChildren", b"\\Noselect"), b"/", "[Gmail]"),
         ((b"\\All", b"\\HasNoChildren"), b"/", "[Gmail]/All Mail"),
         ((b"\\HasNoChildren", b"\\Sent"), b"/", "[Gmail]/Sent Mail"),
         ((b"\\NonExistent", b"\\HasChildren"), b"/", "[Gmail]/Old"),
         ((b"\\HasNoChildren",), b"/", "[Gmail]/Old/2019")]


@pytest.mark.parametrize(("mailbox", "server_text", "expected", "absent"), [
    ("[Gmail]", "examine [Gmail]: select failed: [NONEXISTENT] Unknown Mailbox: [Gmail] (Failure)",
     ["'[Gmail]' cannot be selected", "its selectable folders: [Gmail]/All Mail, [Gmail]/Old/2019, "
      "[Gmail]/Sent Mail", "(server: [NONEXISTENT] Unknown Mailbox: [Gmail] (Failure))"], ["has no folder"]),
    ("[Gmail]/Old", "", ["'[Gmail]/Old' cannot be selected", "its selectable folders: [Gmail]/Old/2019"], []),
    ("[Gmail]/Trash", "examine: SELECT command error: BAD [b'[NONEXISTENT] Unknown Mailbox: [Gmail]/Trash']",
     ["has no folder '[Gmail]/Trash'", "(server: [NONEXISTENT] Unknown Mailbox: [Gmail]/Trash)"], ["']"]),
    ("inbox.sub", "", ["has no folder 'inbox.sub'"], ["cannot be selected"]),
])
def test_missing_and_unselectable_folders_are_told_apart(mailbox, server_text, expected, absent):
    """\\Noselect and \\NonExistent folders say they cannot be selected and list their selectable
    children; a missing folder says so; the server's words come without imaplib's quoting."""
    text = str(mailbox_not_found(mailbox, GMAIL, server_text))
    for part in expected:
        assert part in text, text
    for part in absent:
        assert part not in text, text


def test_servers_own_words_for_an_unselectable_folder_are_recognised():
    """Texts servers use for a \\Noselect folder lead to the LIST that explains it."""
    from email_ingestion.imap.folders import names_missing_mailbox
    for answer in ("NO Mailbox is not selectable", "NO [CANNOT] Mailbox is unselectable",
                   "NO Cannot select this mailbox", "NO [NONEXISTENT] Unknown Mailbox: [Gmail] (Failure)"):
        assert names_missing_mailbox(answer), answer
