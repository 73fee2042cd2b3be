"""`email-ingest config show`: the settings in effect, secrets redacted, and where each came from."""

from __future__ import annotations

import json

import pytest

from email_ingestion.admin import cli


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    import os
    for key in list(os.environ):
        if key.startswith(("IMAP_", "REDIS_", "GOOGLE_", "LOG_", "WORKER_", "EMAIL_INGEST_")) or key == "BATCH_SIZE":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_each_value_names_its_source_and_secrets_are_redacted(clean_env, tmp_path, capsys):
    """Environment beats the file, the file beats the default, flags beat both; no secret is printed."""
    env_file = tmp_path / "prod.env"
    env_file.write_text("REDIS_PASSWORD=hunter2-secret\nBATCH_SIZE=100\nIMAP_HOST=from-file\n"
                        "REDIS_URL=redis://u:p%40ss-secret@127.0.0.1:6379/0\n")
    clean_env.setenv("IMAP_HOST", "from-env")
    assert cli.main(["config", "show", "--json", "--stream", "s1", "--env-file", str(env_file)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["IMAP_HOST"] == {"value": "from-env", "source": "environment"}
    assert shown["BATCH_SIZE"] == {"value": "100", "source": f"env file {env_file}"}
    assert shown["REDIS_STREAM_NAME"]["source"] == "command line"
    assert shown["POLL_INTERVAL_SECONDS"]["source"] == "default"
    assert shown["REDIS_PASSWORD"]["value"] == "********"
    assert "secret" not in out and "hunter2" not in out


def test_env_file_is_taken_anywhere_on_the_command_line(clean_env, tmp_path, capsys):
    """`--env-file` before the subcommand, after it, or as --env-file=F: the same file is read."""
    env_file = tmp_path / "a.env"
    env_file.write_text("BATCH_SIZE=77\n")
    for argv in (["--env-file", str(env_file), "config", "--json"], ["config", "--json", f"--env-file={env_file}"]):
        clean_env.delenv("EMAIL_INGEST_ENV_FILE", raising=False)
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out)["BATCH_SIZE"]["value"] == "77"


@pytest.mark.parametrize(("variable", "value", "shown"), [
    ("REDIS_URL", "redis://127.0.0.1:6379/0?password=q-secret", "redis://127.0.0.1:6379/0?password=********"),
    ("REDIS_URL", "redis://u:p@ss/w#rd?x-secret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("REDIS_URL", "unix:///run/redis.sock?password=u-secret", "unix:///run/redis.sock?password=********"),
    ("WORKER_HANDLER", "webhook:https://u:tok-secret@hooks.example.com/services/T0/B0/x-secret?token=t-secret",
     "webhook:https://hooks.example.com/********?token=********"),
])
def test_secrets_inside_urls_are_redacted(clean_env, capsys, variable, value, shown):
    """A password in REDIS_URL's query, a webhook's userinfo, secret path or token never
    appears in `config show` (text or JSON); what is left names the host."""
    clean_env.setenv(variable, value)
    assert cli.main(["config", "show", "--json", "--env-file", "/dev/null"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)[variable]["value"] == shown and "secret" not in out
    assert cli.main(["config", "show", "--env-file", "/dev/null"]) == 0
    assert "secret" not in capsys.readouterr().out


def test_stream_flag_is_the_source_of_both_stream_settings(clean_env, capsys):
    """`--stream s1` sets REDIS_STREAM_NAME and WORKER_STREAMS: both say "command line"."""
    assert cli.main(["config", "show", "--json", "--stream", "s1", "--env-file", "/dev/null"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["WORKER_STREAMS"] == {"value": "s1", "source": "command line"}
