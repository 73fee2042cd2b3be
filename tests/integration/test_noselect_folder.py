"""Issue 18 item 17: IMAP_MAILBOX naming a \\Noselect folder (Gmail's [Gmail], a Dovecot
parent folder made implicitly) says so and names its selectable children, in one line."""

from __future__ import annotations

import uuid

from tests.conftest import imap_admin
from tests.integration.test_error_classes import assert_one_clear_line, run_service


def test_noselect_parent_exits_2_naming_its_selectable_children(producer_env, dovecot):
    """A parent that only holds folders: exit 2, "cannot be selected", its children listed,
    not "the server has no folder" and not its own name as a suggestion."""
    parent = f"[Mail-{uuid.uuid4().hex[:6]}]"
    client = imap_admin(dovecot)
    client.create_folder(f"{parent}/All Mail")
    client.create_folder(f"{parent}/Sent Mail")
    flags = {name: flags for flags, _, name in client.list_folders()}
    client.logout()
    assert b"\\Noselect" in flags[parent]
    done = run_service({**producer_env, "IMAP_MAILBOX": parent})
    assert_one_clear_line(done, 2, "IMAP_MAILBOX", f"'{parent}' cannot be selected",
                          f"its selectable folders: {parent}/All Mail, {parent}/Sent Mail")
    assert "has no folder" not in done.stderr and "']" not in done.stderr
