"""The mailboxes one producer follows: MAILBOXES_FILE, or the IMAP_ settings as a list of one.

    # mailboxes.toml
    [[mailbox]]
    user = "sales@example.com"
    mailbox = "INBOX"
    # optional, else the usual settings: host, port, auth_method, token_file, stream,
    # password_env (the NAME of the variable holding the password), max_connections

Each entry becomes a whole `Settings` (the process's settings with that entry's values laid
over them), checked like the single-mailbox settings, so one mailbox's settings can be
reasoned about without knowing there are others. tomllib is the standard library's reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.keys import MailboxKeys
from email_ingestion.common.settings import (
    GoogleSettings,
    ImapSettings,
    RedisSettings,
    Settings,
    require_producer_settings,
)

_IMAP_KEYS = {"user", "mailbox", "host", "port", "auth_method", "max_connections"}
_KNOWN = _IMAP_KEYS | {"password_env", "token_file", "stream"}


@dataclass(frozen=True)
class Mailbox:
    """One mailbox to follow and the settings to follow it with."""

    settings: Settings

    @property
    def account(self) -> str:
        return self.settings.imap.user

    @property
    def name(self) -> str:
        return self.settings.imap.mailbox

    @property
    def stream(self) -> str:
        return self.settings.redis.stream_name

    @property
    def label(self) -> str:
        """account/mailbox, for logs and /status."""
        return f"{self.account}/{self.name}"

    @property
    def key(self) -> str:
        """Unique within a producer's list (checked at load)."""
        return f"{self.stream}\0{self.account}\0{self.name}"

    @property
    def keys(self) -> MailboxKeys:
        return MailboxKeys(self.stream, self.account, self.name)


def load_mailboxes(settings: Settings) -> list[Mailbox]:
    """MAILBOXES_FILE's mailboxes, or the one the IMAP_ settings name. Raises SettingsError
    naming the file, the entry and the key at fault."""
    path = settings.producer.mailboxes_file
    if path is None:
        require_producer_settings(settings)
        return [Mailbox(settings)]
    mailboxes = [_entry(settings, path, index, table) for index, table in enumerate(_tables(path), start=1)]
    _check_unique(path, mailboxes)
    _check_connections(path, mailboxes)
    return mailboxes


def fleet_name(mailboxes: list[Mailbox]) -> str:
    """Producers following the same list of mailboxes share work; another list is another
    fleet, so its producers' count does not skew this one's fair share."""
    text = "\n".join(sorted(f"{m.stream}\0{m.account}\0{m.name}" for m in mailboxes))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tables(path: Path) -> list[dict[str, Any]]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"invalid setting MAILBOXES_FILE: cannot read {path} ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"invalid setting MAILBOXES_FILE: {path} is not valid TOML ({exc})") from None
    tables = document.get("mailbox")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise SettingsError(f"invalid setting MAILBOXES_FILE: {path} has no [[mailbox]] tables")
    return tables


def _entry(settings: Settings, path: Path, index: int, table: dict[str, Any]) -> Mailbox:
    where = f"MAILBOXES_FILE {path}, mailbox {index}"
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise SettingsError(f"invalid setting {where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KNOWN))})")
    if not table.get("user"):
        raise SettingsError(f"missing setting {where}: user (the account to read)")
    imap: dict[str, Any] = {k: v for k, v in table.items() if k in _IMAP_KEYS}
    if "password_env" in table:
        imap["password"] = SecretStr(_password(where, table["password_env"]))
    try:
        entry = dataclasses.replace(
            settings,
            imap=ImapSettings.model_validate({**settings.imap.model_dump(), **imap}),
            google=_override(GoogleSettings, settings.google, token_file=table.get("token_file")),
            redis=_override(RedisSettings, settings.redis, stream_name=table.get("stream")))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "?"
        raise SettingsError(f"invalid setting {where}: {key}: {error['msg']}") from None
    try:
        require_producer_settings(entry)
    except SettingsError as exc:
        raise SettingsError(f"{where} ({entry.imap.user}/{entry.imap.mailbox}): {exc}") from None
    return Mailbox(entry)


def _override(cls: type[Any], current: Any, **values: Any) -> Any:
    given = {k: v for k, v in values.items() if v is not None}
    return cls.model_validate({**current.model_dump(), **given}) if given else current


def _password(where: str, variable: object) -> str:
    if not isinstance(variable, str) or not variable:
        raise SettingsError(f"invalid setting {where}: password_env must name an environment variable")
    value = os.environ.get(variable)
    if not value:
        raise SettingsError(f"missing setting {variable}: {where} reads its password from it (password_env)")
    return value


def _check_unique(path: Path, mailboxes: list[Mailbox]) -> None:
    seen = Counter((m.stream, m.account, m.name) for m in mailboxes)
    for (stream, account, name), count in seen.items():
        if count > 1:
            raise SettingsError(f"invalid setting MAILBOXES_FILE {path}: {account}/{name} is listed {count} "
                                f"times for stream {stream}")


def _check_connections(path: Path, mailboxes: list[Mailbox]) -> None:
    """One IMAP connection per mailbox (IDLE shares it): an account's mailboxes must fit its
    max_connections (the smallest one given for it)."""
    per_account = Counter((m.account, m.settings.imap.host) for m in mailboxes)
    for (account, host), count in per_account.items():
        limit = min(m.settings.imap.max_connections for m in mailboxes
                    if (m.account, m.settings.imap.host) == (account, host))
        if count > limit:
            raise SettingsError(f"invalid setting MAILBOXES_FILE {path}: {account} at {host} has {count} mailboxes, "
                                f"one IMAP connection each, above its max_connections {limit} (Gmail allows 15 "
                                "per account in all, the user's own mail clients included)")
