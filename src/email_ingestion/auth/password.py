"""LOGIN with a password or an app password; AUTHENTICATE PLAIN for non-ASCII ones.

IMAP LOGIN (RFC 3501) has no defined charset, and imaplib sends ASCII only: a password
such as "pässwort" raised UnicodeEncodeError and crashed the producer (issue 9 §8).
SASL PLAIN is UTF-8 by definition (RFC 4616), so that is what such credentials use when
the server offers it; otherwise the operator is told, once, instead of a restart loop.
"""

from __future__ import annotations

from imapclient import IMAPClient
from pydantic import SecretStr

from email_ingestion.common.errors import SettingsError

AUTH_PLAIN = b"AUTH=PLAIN"


class PasswordAuthenticator:
    def __init__(self, *, password: SecretStr) -> None:
        self._password = password

    def login(self, client: IMAPClient, user: str) -> None:
        password = self._password.get_secret_value()
        if user.isascii() and password.isascii():
            client.login(user, password)
            return
        if AUTH_PLAIN not in client.capabilities():
            raise SettingsError(
                "invalid setting IMAP_PASSWORD: IMAP_USER or IMAP_PASSWORD has non-ASCII characters, which "
                "need AUTHENTICATE PLAIN (RFC 4616), and this server does not offer it; use an ASCII "
                "password (or an app password)")
        client.plain_login(user, password)

    def on_rejected(self) -> bool:
        return False
