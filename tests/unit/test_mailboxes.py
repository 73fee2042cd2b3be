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


@pytest.mark.parametrize(("first", "second"), [
    ("INBOX", "inbox"), ("Inbox", "INBOX"), ("Entwürfe", "Entw&APw-rfe"), ("日本語", "&ZeVnLIqe-"),
])
def test_two_spellings_of_one_folder_are_refused(tmp_path, monkeypatch, first, second):
    """INBOX in any case, and a name in modified UTF-7 and in Unicode, are one folder: listed twice, refused."""
    toml = f'[[mailbox]]\nuser = "a@x.org"\nmailbox = "{first}"\n[[mailbox]]\nuser = "a@x.org"\nmailbox = "{second}"\n'
    with pytest.raises(SettingsError, match="listed 2 times") as caught:
        mailboxes_from(tmp_path, monkeypatch, toml)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("spelled", "canonical"), [
    ("inbox", "INBOX"), ("Entw&APw-rfe", "Entwürfe"), ("R&D", "R&D"), ("R&-D", "R&-D"), ("x&AGE-", "x&AGE-"),
    ("Archive", "Archive"), ("archive", "archive"), ("INBOX/Sub", "INBOX/Sub"),
])
def test_each_folder_has_one_spelling_used_for_its_keys(tmp_path, monkeypatch, spelled, canonical):
    """The canonical name is the mailbox's name, its keys' and its payloads'; other names stay as written."""
    [only] = mailboxes_from(tmp_path, monkeypatch, f'[[mailbox]]\nuser = "a@x.org"\nmailbox = "{spelled}"\n')
    assert only.name == only.settings.imap.mailbox == canonical
    assert only.keys.state.endswith(f":{canonical}:state")


def test_the_single_mailbox_settings_are_canonical_too(monkeypatch):
    """IMAP_MAILBOX=inbox follows INBOX, and knows where its state was kept before."""
    for key, value in {**BASE, "IMAP_USER": "solo@example.com", "IMAP_MAILBOX": "inbox"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MAILBOXES_FILE", raising=False)
    [only] = load_mailboxes(load_settings(env_file=None))
    assert only.name == "INBOX"
    assert [k.state for k in only.earlier_keys] == ["email_ingestion:{main}:solo@example.com:inbox:state"]


def test_streams_sharing_a_hash_tag_keep_apart_a_folders_lease_and_position(tmp_path, monkeypatch):
    """{mail}a and {mail}b: one slot, but each stream has its own lease and position for the folder."""
    a, b = mailboxes_from(tmp_path, monkeypatch, '[[mailbox]]\nuser = "a@x.org"\nstream = "{mail}a"\n'
                                                 '[[mailbox]]\nuser = "a@x.org"\nstream = "{mail}b"\n')
    assert a.keys.lease != b.keys.lease and a.keys.state != b.keys.state
    assert a.keys.state.startswith("email_ingestion:{mail}:") and b.keys.state.startswith("email_ingestion:{mail}:")
    assert [k.state for k in a.earlier_keys] == ["email_ingestion:{mail}:a@x.org:INBOX:state"]


def test_a_stream_without_a_tag_keeps_its_key_layout_a_tagged_one_names_itself(tmp_path, monkeypatch):
    """Plain stream names keep the keys they always had; a tagged stream's keys name the stream
    (as the consumer side's do) and know where they were kept before."""
    plain, tagged = mailboxes_from(tmp_path, monkeypatch, '[[mailbox]]\nuser = "a@x.org"\n'
                                                          '[[mailbox]]\nuser = "a@x.org"\nstream = "{sales}"\n')
    assert plain.keys.state == "email_ingestion:{main}:a@x.org:INBOX:state"
    assert plain.earlier_keys == []
    assert tagged.keys.state == "email_ingestion:{sales}:%7Bsales%7D:a@x.org:INBOX:state"
    assert [k.state for k in tagged.earlier_keys] == ["email_ingestion:{sales}:a@x.org:INBOX:state"]


@pytest.mark.parametrize(("toml", "expected"), [
    ('[[mailboxes]]\nuser = "a@x.org"\n', "unknown table or key 'mailboxes' (did you mean 'mailbox'?)"),
    ('[[mailbox]]\nuser = "a@x.org"\n[[Mailbox]]\nuser = "b@x.org"\n', "'Mailbox' (did you mean 'mailbox'?)"),
    ('user = "a@x.org"\n[[mailbox]]\nuser = "b@x.org"\n', "unknown table or key 'user'"),
    ('[[mailbox]]\nuser = "a@x.org"\nmailboxx = "Sales"\n', "unknown key 'mailboxx' (did you mean 'mailbox'?)"),
    ('[[mailbox]]\nuser = "a@x.org"\npasword_env = "X"\n', "unknown key 'pasword_env' (did you mean 'password_env'?)"),
    ('[[mailbox]]\nuser = "a@x.org"\nstreams = "s"\n', "unknown key 'streams' (did you mean 'stream'?)"),
])
def test_a_misspelt_table_or_key_is_refused_naming_the_nearest(tmp_path, monkeypatch, toml, expected):
    """Nothing in the file is ignored: a table or key not known is named, with the closest valid one."""
    with pytest.raises(SettingsError) as caught:
        mailboxes_from(tmp_path, monkeypatch, toml)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
