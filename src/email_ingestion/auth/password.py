"""LOGIN with a password or an app password."""

from __future__ import annotations

from imapclient import IMAPClient
from pydantic import SecretStr


class PasswordAuthenticator:
    def __init__(self, password: SecretStr) -> None:
        self._password = password

    def login(self, client: IMAPClient, user: str) -> None:
        client.login(user, self._password.get_secret_value())

    def on_rejected(self) -> bool:
        return False
