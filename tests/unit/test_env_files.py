"""Which .env file is read, and misspelt variables reported with the nearest known name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from email_ingestion.common.env_files import install_dirs, resolve_env_file, unknown_variables
from email_ingestion.common.errors import SettingsError
from email_ingestion.common.settings import env_reference, load_settings
from tests.conftest import ROOT
from tests.support.waits import wait_until

KNOWN = [row[0] for row in env_reference()]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("IMAP_", "REDIS_", "GOOGLE_", "LOG_", "WORKER_", "EMAIL_INGEST_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_env_file_variable_names_the_file(clean_env, tmp_path):
    """EMAIL_INGEST_ENV_FILE is read from any working directory."""
    env_file = tmp_path / "conf" / "ingest.env"
    env_file.parent.mkdir()
    env_file.write_text("IMAP_USER=carol@example.org\n")
    clean_env.setenv("EMAIL_INGEST_ENV_FILE", str(env_file))
    assert load_settings().imap.user == "carol@example.org"


def test_named_env_file_that_does_not_exist_is_a_setting_error(clean_env, tmp_path):
    """A typo in --env-file or EMAIL_INGEST_ENV_FILE fails with one line, not silent defaults."""
    with pytest.raises(SettingsError, match="--env-file"):
        load_settings(env_file=tmp_path / "missing.env")
    clean_env.setenv("EMAIL_INGEST_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(SettingsError, match="EMAIL_INGEST_ENV_FILE"):
        load_settings()


def test_cwd_env_file_comes_before_the_installation(clean_env, tmp_path):
    """.env in the working directory wins; None reads no file at all."""
    (tmp_path / ".env").write_text("IMAP_USER=dave@example.org\n")
    assert resolve_env_file(".env") == tmp_path / ".env"
    assert load_settings().imap.user == "dave@example.org"
    assert load_settings(env_file=None).imap.user == ""


def test_installation_directory_is_searched(clean_env, tmp_path):
    """Without a .env here, the one next to the installation (the checkout) is found."""
    assert ROOT in install_dirs()
    found = resolve_env_file(".env")
    assert found is None or found.parent in install_dirs()


@pytest.mark.parametrize(("name", "nearest"), [
    ("IMAP_SERVER", None), ("IMAP_HOTS", "IMAP_HOST"), ("REDIS_PASWORD", "REDIS_PASSWORD"),
    ("WORKER_HANDLERS", "WORKER_HANDLER"), ("GOOGLE_CLIENTID", "GOOGLE_CLIENT_ID"),
    ("HEALTH_STALL_SECOND", "HEALTH_STALL_SECONDS"),
])
def test_unknown_prefixed_variables_are_reported(name, nearest):
    """Each misspelt project variable gets one warning; the nearest known name when one is close."""
    warnings = unknown_variables([name, "PATH", "IMAP_HOST", "WORKER_BASE_PORT"], KNOWN)
    assert len(warnings) == 1 and name in warnings[0]
    if nearest:
        assert f"did you mean {nearest}?" in warnings[0]


def test_warning_reaches_the_service_log(tmp_path):
    """A worker started with IMAP_SERVER and a misspelt name in its .env says so at start."""
    (tmp_path / "w.env").write_text("WORKER_HANDLR=noop\n")
    env = {"PATH": os.environ["PATH"], "IMAP_SERVER": "imap.example.org", "REDIS_URL": "redis://127.0.0.1:1/0",
           "REDIS_SOCKET_TIMEOUT_SECONDS": "0.2"}
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--env-file", str(tmp_path / "w.env")],
                                env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: "WORKER_HANDLR" in log.read_text(), timeout_s=30)
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "unknown setting IMAP_SERVER" in text
    assert "unknown setting WORKER_HANDLR in " in text and "is ignored (did you mean WORKER_HANDLER?)" in text


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\n", b'REDIS_URL="unterminated\nIMAP_HOST=x\n'])
def test_an_unreadable_env_file_is_a_settings_error_not_a_fallback(tmp_path, content):
    """Non-UTF-8 bytes or an unparseable line: one SettingsError naming the file, never defaults."""
    path = tmp_path / "bad.env"
    path.write_bytes(content)
    with pytest.raises(SettingsError, match="bad.env"):
        load_settings(env_file=path)


@pytest.mark.parametrize(("name", "nearest"), [
    ("MAILBOX_FILE", "MAILBOXES_FILE"), ("INITAL_SYNC", "INITIAL_SYNC"), ("MAX_RETRYS", "MAX_RETRIES"),
    ("POLL_INTERVALL_SECONDS", "POLL_INTERVAL_SECONDS"),
])
def test_unprefixed_misspellings_in_an_env_file_are_reported(clean_env, tmp_path, name, nearest):
    """A misspelt name without a project prefix in .env is named with the nearest setting, never silently ignored."""
    env_file = tmp_path / "s.env"
    env_file.write_text(f"{name}=1\n")
    settings = load_settings(env_file=env_file)
    assert [w for w in settings.warnings if name in w and f"did you mean {nearest}?" in w], settings.warnings


def test_near_misses_in_the_environment_are_reported_but_unrelated_names_are_not(clean_env, monkeypatch):
    """In the environment only a project prefix or a close miss of a setting's name is reported."""
    monkeypatch.setenv("POLL_INTERVALL_SECONDS", "5")
    monkeypatch.setenv("HOSTNAME", "x")
    monkeypatch.setenv("LANG", "C")
    warnings = load_settings(env_file=None).warnings
    assert any("POLL_INTERVALL_SECONDS" in w and "POLL_INTERVAL_SECONDS" in w for w in warnings)
    assert not [w for w in warnings if "HOSTNAME" in w or "LANG" in w]


def test_an_empty_value_means_unset(clean_env, tmp_path):
    """`IMAP_PORT=` (an uncommented line of .env.example) is the default, not an invalid number."""
    env_file = tmp_path / "s.env"
    env_file.write_text("IMAP_PORT=\nREDIS_PORT=\nBATCH_SIZE=\n")
    settings = load_settings(env_file=env_file)
    assert settings.imap.port is None and settings.redis.port == 6379 and settings.producer.batch_size == 500


FOREIGN = {"REDIS_SERVICE_HOST": "10.0.0.1", "REDIS_SERVICE_PORT": "6379", "REDIS_SERVICE_PORT_REDIS": "6379",
           "REDIS_PORT_6379_TCP": "tcp://10.0.0.1:6379", "REDIS_PORT_6379_TCP_ADDR": "10.0.0.1",
           "REDIS_PORT_6379_TCP_PROTO": "tcp", "IMAP_SERVICE_HOST": "10.0.0.2", "REDIS_MASTER_SERVICE_HOST": "1",
           "REDIS_VERSION": "7.2.4", "REDIS_DOWNLOAD_URL": "http://x", "REDIS_DOWNLOAD_SHA": "ab",
           "INVOCATION_ID": "x", "JOURNAL_STREAM": "8:1", "CREDENTIALS_DIRECTORY": "/run/c", "CI": "true"}


def test_kubernetes_docker_and_systemd_variables_are_not_called_misspellings(clean_env, monkeypatch):
    """A pod next to a Service named redis, a Docker link, an image's build variables and a
    systemd service's own variables give no warning; a real misspelling beside them still does."""
    for name, value in FOREIGN.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_PASWORD", "x")
    warnings = load_settings(env_file=None).warnings
    assert len(warnings) == 1 and "REDIS_PASWORD" in warnings[0], warnings


def test_a_kubernetes_service_link_in_redis_port_is_ignored_with_a_warning(clean_env):
    """REDIS_PORT=tcp://10.0.0.1:6379 (a Service named redis) is not a port: the default, and a warning, not exit 2."""
    clean_env.setenv("REDIS_PORT", "tcp://10.0.0.1:6379")
    settings = load_settings(env_file=None)
    assert settings.redis.port == 6379
    assert any("REDIS_PORT=tcp://10.0.0.1:6379 looks like a Kubernetes" in w for w in settings.warnings)
