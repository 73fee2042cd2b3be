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
import difflib
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
from email_ingestion.imap.names import canonical_folder

_IMAP_KEYS = {"user", "mailbox", "host", "port", "auth_method", "max_connections"}
_KNOWN = _IMAP_KEYS | {"password_env", "token_file", "stream"}
_TABLE = "mailbox"  # the one top-level name the file may hold: [[mailbox]]


@dataclass(frozen=True)
class Mailbox:
    """One mailbox to follow and the settings to follow it with."""

    settings: Settings
    spelled: str = ""  # the folder name as the settings wrote it, when not canonical

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

    @property
    def earlier_keys(self) -> list[MailboxKeys]:
        """Where versions before issue 18 kept this mailbox's state: under the folder name as
        spelled, and without the stream's name when the stream has a hash tag of its own."""
        names = list(dict.fromkeys([self.name, self.spelled or self.name]))
        keys = [MailboxKeys(self.stream, self.account, name, layout=1) for name in names]
        return [k for k in keys if k.state != self.keys.state]


def canonical(settings: Settings) -> Mailbox:
    """`settings` with the folder's one spelling (imap/names.py): one folder, one identity."""
    spelled = settings.imap.mailbox
    name = canonical_folder(spelled)
    if name == spelled:
        return Mailbox(settings)
    imap = settings.imap.model_copy(update={"mailbox": name})
    return Mailbox(dataclasses.replace(settings, imap=imap), spelled=spelled)


def load_mailboxes(settings: Settings) -> list[Mailbox]:
    """MAILBOXES_FILE's mailboxes, or the one the IMAP_ settings name. Raises SettingsError
    naming the file, the entry and the key at fault."""
    path = settings.producer.mailboxes_file
    if path is None:
        require_producer_settings(settings)
        return [canonical(settings)]
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
    for name in document:
        if name != _TABLE:  # a misspelt table would leave its mailboxes silently unfollowed
            raise SettingsError(f"invalid setting MAILBOXES_FILE: {path} has an unknown table or key {name!r}"
                                f"{_nearest(name, [_TABLE])}; each mailbox is a [[{_TABLE}]] table")
    tables = document.get(_TABLE)
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise SettingsError(f"invalid setting MAILBOXES_FILE: {path} has no [[{_TABLE}]] tables")
    return tables


def _nearest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _entry(settings: Settings, path: Path, index: int, table: dict[str, Any]) -> Mailbox:
    where = f"MAILBOXES_FILE {path}, mailbox {index}"
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise SettingsError(f"invalid setting {where}: unknown key {unknown[0]!r}{_nearest(unknown[0], sorted(_KNOWN))}"
                            f" (known: {', '.join(sorted(_KNOWN))})")
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
    return canonical(entry)


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
    """One folder, one entry per stream: two spellings of one folder ("INBOX" and "inbox",
    "Entw&APw-rfe" and "Entwürfe") would emit every message twice under different
    idempotency keys. Distinct keys too, so no two entries can ever share a lease."""
    by_identity: dict[tuple[str, str, str], list[Mailbox]] = {}
    by_lease: dict[str, Mailbox] = {}
    for m in mailboxes:
        by_identity.setdefault((m.stream, m.account, m.name), []).append(m)
        other = by_lease.setdefault(m.keys.lease, m)
        if other is not m and (other.stream, other.name) != (m.stream, m.name):
            raise SettingsError(f"invalid setting MAILBOXES_FILE {path}: {m.label} for streams {other.stream} and "
                                f"{m.stream} would share one lease and one position; give one stream another name")
    for (stream, account, name), same in by_identity.items():
        if len(same) > 1:
            spellings = ", ".join(repr(m.spelled or m.name) for m in same)
            raise SettingsError(f"invalid setting MAILBOXES_FILE {path}: {account}/{name} is listed {len(same)} "
                                f"times for stream {stream} (as {spellings}); list each folder once")


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
