"""Settings: defaults, env names as documented, and one clear line (exit 2) for bad ones."""

from __future__ import annotations

import os
import subprocess

import pytest

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.settings import load_settings, require_producer_settings
from tests.conftest import producer_cmd


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("IMAP_", "REDIS_", "GOOGLE_", "LOG_", "WORKER_")) or key in (
                "BATCH_SIZE", "POLL_INTERVAL_SECONDS", "INITIAL_SYNC"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_defaults(clean_env):
    """Without env: port 993 over SSL, OAuth2, initial sync all, the documented stream and group names."""
    s = load_settings(env_file=None)
    assert s.imap.effective_port == 993 and s.imap.ssl and s.imap.auth_method == "oauth2"
    assert s.redis.stream_name == "email_ingestion_stream"
    assert s.producer.initial_sync == "all" and s.worker.group == "email_processor_group"


def test_env_names_and_overrides(clean_env):
    """Documented env names are read, INITIAL_SYNC=since: gives a date; explicit overrides beat env."""
    clean_env.setenv("IMAP_HOST", "mail.example.org")
    clean_env.setenv("BATCH_SIZE", "50")
    clean_env.setenv("INITIAL_SYNC", "since:2024-03-01")
    s = load_settings({"producer": {"batch_size": 7}}, env_file=None)
    assert s.imap.host == "mail.example.org" and s.producer.batch_size == 7
    assert str(s.producer.since_date) == "2024-03-01"


def test_env_file_is_read(clean_env, tmp_path):
    """Values in the given env file are loaded into settings."""
    env_file = tmp_path / "x.env"
    env_file.write_text("IMAP_USER=bob@example.org\nREDIS_STREAM_NAME=s2\n")
    s = load_settings(env_file=env_file)
    assert s.imap.user == "bob@example.org" and s.redis.stream_name == "s2"


@pytest.mark.parametrize(("env", "needle"), [
    ({"IMAP_PORT": "abc"}, "IMAP_PORT"),
    ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
    ({"INITIAL_SYNC": "yesterday"}, "INITIAL_SYNC"),
    ({"IMAP_AUTH_METHOD": "kerberos"}, "IMAP_AUTH_METHOD"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
])
def test_invalid_values_name_the_variable(clean_env, env, needle):
    """An invalid value raises SettingsError naming the offending environment variable."""
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings(env_file=None)


@pytest.mark.parametrize(("env", "needle"), [
    ({}, "IMAP_USER"),
    ({"IMAP_USER": "a@b.c", "IMAP_AUTH_METHOD": "password"}, "IMAP_PASSWORD"),
    ({"IMAP_USER": "a@b.c", "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": "x", "IMAP_SSL": "false",
      "IMAP_HOST": "mail.example.org"}, "IMAP_SSL"),
    ({"IMAP_USER": "a@b.c", "IMAP_CA_FILE": "/nonexistent/ca.pem"}, "IMAP_CA_FILE"),
])
def test_producer_cross_checks(clean_env, env, needle):
    """Producer needs IMAP_USER, a password for password auth, TLS to remote hosts, an existing CA file."""
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(SettingsError, match=needle):
        require_producer_settings(load_settings(env_file=None))


def test_bad_setting_exits_2_with_one_line_and_no_traceback(tmp_path):
    """A bad setting makes the producer exit 2 with one stderr line naming the variable and no traceback."""
    env = {"PATH": os.environ["PATH"], "IMAP_USER": "a@b.c", "IMAP_PORT": "not-a-port"}
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "IMAP_PORT" in done.stderr and "Traceback" not in done.stderr


def test_cli_flag_overrides_env(tmp_path):
    """A CLI flag overrides the env and is validated: --batch-size 0 exits 2 naming BATCH_SIZE."""
    env = {"PATH": os.environ["PATH"], "IMAP_USER": "a@b.c", "BATCH_SIZE": "10"}
    done = subprocess.run(producer_cmd("--once", "--batch-size", "0"), env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "BATCH_SIZE" in done.stderr


def test_configuration_reference_and_env_example_are_generated_from_the_settings():
    """docs/configuration.md's table and .env.example are exactly what the settings classes
    generate (regenerate: python -m email_ingestion.common.settings --write)."""
    from pathlib import Path

    from email_ingestion.common.settings import TABLE_END, TABLE_START, env_example, markdown_table
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "configuration.md").read_text()
    assert doc.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip() == markdown_table().strip()
    assert (root / ".env.example").read_text() == env_example()


@pytest.mark.parametrize(("name", "value"), [("IMAP_MAILBOX", "INBOX\r\nA1 CREATE x"), ("IMAP_MAILBOX", "INBOX\nX"),
                                             ("IMAP_USER", "a@b\x1b"), ("REDIS_SOCKET_TIMEOUT_SECONDS", "inf"),
                                             ("IMAP_TIMEOUT_SECONDS", "nan")])
def test_values_that_break_commands_or_timers_are_settings_errors(monkeypatch, name, value):
    """Control characters in names sent to IMAP and infinite/NaN durations are refused at start."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings(env_file=None)


@pytest.mark.parametrize(("env", "flags", "streams"), [
    ({}, None, ("email_ingestion_stream",)),  # unset: REDIS_STREAM_NAME alone, as before issue 12
    ({"REDIS_STREAM_NAME": "s2"}, None, ("s2",)),
    ({"WORKER_STREAMS": " a, {b}x "}, None, ("a", "{b}x")),
    ({"WORKER_STREAMS": ""}, None, ("email_ingestion_stream",)),
    ({"WORKER_STREAMS": "a,b"}, ["c"], ("c",)),  # the flags win over the variable
    ({}, ["a", "b"], ("a", "b")),
])
def test_worker_streams_come_from_flags_then_variable_then_stream_name(clean_env, env, flags, streams):
    """`--stream`, repeated, beats WORKER_STREAMS, which beats the single REDIS_STREAM_NAME."""
    from email_ingestion.worker.cli import overrides, parse_args
    for key, value in env.items():
        clean_env.setenv(key, value)
    argv = [arg for name in flags or [] for arg in ("--stream", name)]
    assert load_settings(overrides(parse_args(argv)), env_file=None).worker_streams() == streams


@pytest.mark.parametrize(("value", "says"), [("a,,b", "name 2 is empty"), ("a,b,a", "named twice"),
                                             ("a}b", "hash tag")])
def test_bad_worker_streams_are_settings_errors(clean_env, value, says):
    """An empty, repeated or untaggable stream name in WORKER_STREAMS stops the worker at start."""
    clean_env.setenv("WORKER_STREAMS", value)
    with pytest.raises(SettingsError, match=f"WORKER_STREAMS.*{says}"):
        load_settings(env_file=None)
