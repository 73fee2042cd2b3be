"""MAILBOXES_FILE: one Settings per [[mailbox]] table, every mistake named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.settings import load_settings
from email_ingestion.producer.mailboxes import fleet_name, load_mailboxes

BASE = {"IMAP_HOST": "imap.example.com", "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": "base-secret",
        "REDIS_STREAM_NAME": "main"}


def mailboxes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, **env: str):
    path = tmp_path / "mailboxes.toml"
    path.write_text(toml, encoding="utf-8")
    for key, value in {**BASE, **env, "MAILBOXES_FILE": str(path)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("IMAP_USER", raising=False)
    return load_mailboxes(load_settings(env_file=None))


def test_entries_override_the_usual_settings(tmp_path, monkeypatch):
    """Values given in a table win; the rest comes from the environment."""
    found = mailboxes_from(tmp_path, monkeypatch, """
[[mailbox]]
user = "a@example.com"

[[mailbox]]
user = "b@example.com"
mailbox = "Sales"
host = "imap.other.org"
port = 1993
password_env = "B_PASSWORD"
stream = "{sales}"
token_file = "/tmp/b-token.json"
""", B_PASSWORD="b-secret")
    first, second = found
    assert (first.account, first.name, first.stream, first.settings.imap.host) == (
        "a@example.com", "INBOX", "main", "imap.example.com")
    assert first.settings.imap.password is not None and first.settings.imap.password.get_secret_value() == "base-secret"
    assert (second.account, second.name, second.stream) == ("b@example.com", "Sales", "{sales}")
    assert (second.settings.imap.host, second.settings.imap.effective_port) == ("imap.other.org", 1993)
    assert second.settings.imap.password is not None and second.settings.imap.password.get_secret_value() == "b-secret"
    assert str(second.settings.google.token_file) == "/tmp/b-token.json"
    assert "b-secret" in second.settings.secrets()
    assert second.keys.state.startswith("email_ingestion:{sales}:")


def test_without_the_file_the_imap_settings_are_a_list_of_one(monkeypatch):
    """The single-mailbox environment keeps working unchanged."""
    for key, value in {**BASE, "IMAP_USER": "solo@example.com", "IMAP_MAILBOX": "Archive"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MAILBOXES_FILE", raising=False)
    [only] = load_mailboxes(load_settings(env_file=None))
    assert (only.account, only.name, only.stream) == ("solo@example.com", "Archive", "main")


@pytest.mark.parametrize(("toml", "env", "expected"), [
    ("", {}, "no [[mailbox]] tables"),
    ("[[mailbox]\nuser=", {}, "not valid TOML"),
    ('[[mailbox]]\nmailbox = "INBOX"\n', {}, "mailbox 1: user"),
    ('[[mailbox]]\nuser = "a@x.org"\nfolder = "INBOX"\n', {}, "unknown key 'folder'"),
    ('[[mailbox]]\nuser = "a@x.org"\nport = 0\n', {}, "mailbox 1: port"),
    ('[[mailbox]]\nuser = "a@x.org"\nmailbox = "a\\nb"\n', {}, "control characters"),
    ('[[mailbox]]\nuser = "a@x.org"\npassword_env = "NOPE_PW"\n', {}, "missing setting NOPE_PW"),
    ('[[mailbox]]\nuser = "a@x.org"\nstream = "bad}name"\n', {}, "hash tag"),
    ('[[mailbox]]\nuser = "a@x.org"\n[[mailbox]]\nuser = "a@x.org"\n', {}, "listed 2 times"),
    ('[[mailbox]]\nuser = "a@x.org"\nauth_method = "password"\n', {"IMAP_PASSWORD": ""}, "IMAP_PASSWORD"),
])
def test_mistakes_are_named(tmp_path, monkeypatch, toml, env, expected):
    """Each mistake is a SettingsError naming the file or entry and what is wrong."""
    with pytest.raises(SettingsError) as caught:
        mailboxes_from(tmp_path, monkeypatch, toml, **env)
    assert expected in str(caught.value)
    assert "base-secret" not in str(caught.value)


def test_an_account_cannot_open_more_connections_than_it_allows(tmp_path, monkeypatch):
    """One connection per mailbox: 3 mailboxes of an account with max_connections 2 are refused."""
    tables = "".join(f'[[mailbox]]\nuser = "a@x.org"\nmailbox = "F{i}"\nmax_connections = 2\n' for i in range(3))
    with pytest.raises(SettingsError, match="3 mailboxes.*max_connections 2"):
        mailboxes_from(tmp_path, monkeypatch, tables)
    ok = "".join(f'[[mailbox]]\nuser = "a@x.org"\nmailbox = "F{i}"\n' for i in range(3))
    assert len(mailboxes_from(tmp_path, monkeypatch, ok)) == 3  # default 10


def test_the_fleet_name_depends_on_the_list_not_its_order(tmp_path, monkeypatch):
    """Producers given the same mailboxes in another order are one fleet; another list is another."""
    a = mailboxes_from(tmp_path, monkeypatch, '[[mailbox]]\nuser = "a@x.org"\n[[mailbox]]\nuser = "b@x.org"\n')
    b = mailboxes_from(tmp_path, monkeypatch, '[[mailbox]]\nuser = "b@x.org"\n[[mailbox]]\nuser = "a@x.org"\n')
    c = mailboxes_from(tmp_path, monkeypatch, '[[mailbox]]\nuser = "a@x.org"\n')
    assert fleet_name(a) == fleet_name(b) != fleet_name(c)
