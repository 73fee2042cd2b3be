"""The test Dovecot keeps working while other programs change the temporary folders around it:
a second pytest session starting beside this one makes /tmp/pytest-of-<user> private again,
which once cut the first session's Dovecot off its own files (its auth process runs as
`dovecot`, its mail processes as `nobody`)."""

from __future__ import annotations

from imapclient import IMAPClient

from email_ingestion.sandbox.dovecot import DovecotServer
from email_ingestion.sandbox.sample_mail import sample_message


def test_a_folder_above_the_server_made_private_again_changes_nothing(tmp_path):
    """The folder chosen for the server sits in a folder made private (0700) after the start,
    as pytest does to its per-user folder at every session start: log in, append and fetch
    still work."""
    private = tmp_path / "private"
    server = DovecotServer(private / "dovecot", users={"alice@example.com": "alice-pw"}).start()
    try:
        private.chmod(0o700)
        tmp_path.chmod(0o700)
        client = IMAPClient("127.0.0.1", server.port, ssl=False)
        client.login("alice@example.com", "alice-pw")
        client.append("INBOX", sample_message(1))
        client.select_folder("INBOX")
        assert list(client.fetch(client.search(), ["RFC822.SIZE"])) == [1]
        client.logout()
    finally:
        server.stop()
