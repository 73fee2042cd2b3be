"""XOAUTH2 against Dovecot's oauth2 passdb (real JWT validation), token refresh through a
loopback token endpoint, TLS, and the secrecy of credentials in logs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from email_ingestion.sandbox.dovecot import mint_jwt
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import USER, producer_cmd, stream_payloads, written_keys
from tests.support.token_server import TokenServer

REFRESH_TOKEN = "1//test-refresh-token-abcdefghij"
CLIENT_SECRET = "client-secret-value-xyz"


@pytest.fixture
def token_server():
    server = TokenServer(USER, REFRESH_TOKEN).start()
    yield server
    server.stop()


def write_token_file(path: Path, access_token: str, expiry: dt.datetime, token_uri: str) -> None:
    path.write_text(json.dumps({
        "token": access_token, "refresh_token": REFRESH_TOKEN, "token_uri": token_uri,
        "client_id": "client-id.apps.example", "client_secret": CLIENT_SECRET,
        "scopes": ["https://mail.google.com/"], "expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }))
    path.chmod(0o600)


def oauth_env(producer_env: dict[str, str], token_file: Path, token_uri: str) -> dict[str, str]:
    env = {**producer_env, "IMAP_AUTH_METHOD": "oauth2", "GOOGLE_TOKEN_FILE": str(token_file),
           "GOOGLE_TOKEN_URI": token_uri, "GOOGLE_CLIENT_ID": "client-id.apps.example",
           "GOOGLE_CLIENT_SECRET": CLIENT_SECRET, "LOG_LEVEL": "DEBUG"}
    env.pop("IMAP_PASSWORD")
    return env


def run_producer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(producer_cmd("--once", *args), env=env, capture_output=True, text=True, timeout=60)


def test_xoauth2_with_valid_token_needs_no_refresh(tmp_path, mailbox, producer_env, token_server, redis_client):
    """A still-valid stored access token logs in with XOAUTH2 and syncs without calling the token endpoint."""
    mailbox.append(sample_message(1))
    token_file = tmp_path / "token.json"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    write_token_file(token_file, mint_jwt(USER), later, token_server.url)
    done = run_producer(oauth_env(producer_env, token_file, token_server.url))
    assert done.returncode == 0, done.stderr[-2000:]
    assert token_server.requests == 0
    assert len(stream_payloads(redis_client)) == 1


def test_expired_token_is_refreshed_and_sync_continues(tmp_path, mailbox, producer_env, token_server, redis_client):
    """The stored access token expired overnight: the producer refreshes it at the token
    endpoint, logs in with XOAUTH2, syncs, and saves the new token with mode 0600."""
    mailbox.append(sample_message(1), sample_message(2))
    token_file = tmp_path / "token.json"
    expired = mint_jwt(USER, lifetime_s=-60)
    write_token_file(token_file, expired, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
                     token_server.url)
    env = oauth_env(producer_env, token_file, token_server.url)
    done = run_producer(env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert token_server.requests == 1
    assert len(stream_payloads(redis_client)) == 2
    saved = json.loads(token_file.read_text())
    assert saved["token"] != expired and saved["refresh_token"] == REFRESH_TOKEN
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert_no_secrets(done.stderr, [saved["token"], expired, REFRESH_TOKEN, CLIENT_SECRET])


def test_token_rejected_by_server_is_refreshed_once(tmp_path, mailbox, producer_env, token_server, redis_client):
    """The file says the token is valid, but the server refuses it (revoked): refresh, retry."""
    mailbox.append(sample_message(1))
    token_file = tmp_path / "token.json"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    write_token_file(token_file, "not-a-valid-jwt", later, token_server.url)
    done = run_producer(oauth_env(producer_env, token_file, token_server.url))
    assert done.returncode == 0, done.stderr[-2000:]
    assert token_server.requests == 1
    assert len(stream_payloads(redis_client)) == 1


def test_invalid_grant_is_reported_as_such_with_the_fix(tmp_path, mailbox, producer_env, token_server, redis_client):
    """invalid_grant on refresh exits 3, naming it and the --auth-setup fix, leaking no secrets."""
    token_server.fail_with = "invalid_grant"
    token_file = tmp_path / "token.json"
    write_token_file(token_file, "expired", dt.datetime(2020, 1, 1), token_server.url)
    done = run_producer(oauth_env(producer_env, token_file, token_server.url))
    assert done.returncode == 3
    assert "invalid_grant" in done.stderr
    assert "python producer.py --auth-setup" in done.stderr
    assert "Traceback" not in done.stderr
    assert_no_secrets(done.stderr, [REFRESH_TOKEN, CLIENT_SECRET])


def test_wrong_password_exits_3_without_leaking_it(mailbox, producer_env, redis_client):
    """A refused password exits 3 with a clear message and the password never appears in the logs."""
    env = {**producer_env, "IMAP_PASSWORD": "wrong-password-123", "LOG_LEVEL": "DEBUG"}
    done = run_producer(env)
    assert done.returncode == 3
    assert "refused the credentials" in done.stderr
    assert_no_secrets(done.stderr, ["wrong-password-123"])


def test_password_never_logged_even_at_debug(mailbox, producer_env, redis_client):
    """The IMAP password never appears in logs, even at DEBUG level."""
    mailbox.append(sample_message(1))
    done = run_producer({**producer_env, "LOG_LEVEL": "DEBUG"})
    assert done.returncode == 0
    assert_no_secrets(done.stderr, [producer_env["IMAP_PASSWORD"]])


def test_info_logs_carry_no_subject_address_or_body(mailbox, producer_env, redis_client):
    """INFO logs are JSON with component and correlation id, and hold no subject, address or body."""
    raw = sample_message(1, subject="Secret merger plans")
    mailbox.append(raw)
    done = run_producer({**producer_env, "LOG_LEVEL": "INFO"})
    assert done.returncode == 0
    for line in done.stderr.splitlines():
        record = json.loads(line)
        assert record["component"] == "producer" and "correlation_id" in record
    assert "merger" not in done.stderr and "sender1@example.org" not in done.stderr
    assert "invoice" not in done.stderr.lower()


def test_implicit_tls_with_custom_ca(mailbox, producer_env, dovecot, redis_client):
    """Implicit TLS on the SSL port with IMAP_CA_FILE verifies the server and syncs."""
    mailbox.append(sample_message(1))
    env = {**producer_env, "IMAP_SSL": "true", "IMAP_PORT": str(dovecot.ssl_port), "IMAP_CA_FILE": str(dovecot.cert_file)}
    done = run_producer(env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(stream_payloads(redis_client)) == 1


def test_starttls(mailbox, producer_env, dovecot, redis_client):
    """STARTTLS on the plain port with IMAP_CA_FILE upgrades the connection and syncs."""
    mailbox.append(sample_message(1))
    env = {**producer_env, "IMAP_SSL": "false", "IMAP_STARTTLS": "true", "IMAP_CA_FILE": str(dovecot.cert_file)}
    done = run_producer(env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(stream_payloads(redis_client)) == 1


def test_untrusted_certificate_is_refused(mailbox, producer_env, dovecot, redis_client):
    """Without the CA file the self-signed certificate fails verification: no login happens."""
    env = {**producer_env, "IMAP_SSL": "true", "IMAP_PORT": str(dovecot.ssl_port)}
    done = run_producer(env)
    assert done.returncode == 2
    assert "certificate verification failed" in done.stderr
    assert not written_keys(redis_client)


def test_large_message_is_not_downloaded_whole(mailbox, producer_env, dovecot, redis_client):
    """A 3 MB attachment: the payload lists it and has the text, but far less than 3 MB
    crossed the wire."""
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    msg = MIMEMultipart()
    msg["From"], msg["Subject"], msg["Message-ID"] = "a@example.org", "big", "<big@example.org>"
    msg.attach(MIMEText("Please find the report attached. " * 20, "plain", "utf-8"))
    msg.attach(MIMEApplication(os.urandom(3 * 1024 * 1024), Name="report.bin"))
    raw = msg.as_bytes()
    mailbox.append(raw)
    proxy = TcpProxy(dovecot.port).start()
    try:
        done = run_producer({**producer_env, "IMAP_PORT": str(proxy.port)})
    finally:
        proxy.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    [payload] = stream_payloads(redis_client)
    assert payload["body_text"].startswith("Please find the report attached.")
    assert payload["attachments"][0]["filename"] == "report.bin"
    assert payload["attachments"][0]["size"] == pytest.approx(3 * 1024 * 1024, rel=0.01)
    assert payload["size"] == len(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert payload["body_truncated"] is True
    assert proxy.bytes_to_client < 200_000, f"{proxy.bytes_to_client} bytes downloaded"


def assert_no_secrets(text: str, secrets: list[str]) -> None:
    import base64
    for secret in secrets:
        assert secret not in text
    for secret in secrets:
        xoauth2 = base64.b64encode(f"user={USER}\x01auth=Bearer {secret}\x01\x01".encode()).decode()
        assert xoauth2[:20] not in text


def test_oauth2_cli_info_and_refresh(tmp_path, token_server):
    """The OAuth2 CLI shows token info without secrets, refreshes on demand, and exits 3 on invalid_grant."""
    import sys

    from tests.conftest import ROOT
    token_file = tmp_path / "token.json"
    write_token_file(token_file, "old-access-token-value", dt.datetime(2020, 1, 1), token_server.url)
    env = {"PATH": os.environ["PATH"], "GOOGLE_TOKEN_URI": token_server.url, "GOOGLE_CLIENT_ID": "client-id.apps.example",
           "GOOGLE_CLIENT_SECRET": CLIENT_SECRET}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_ingestion.auth.oauth2_gmail", *args, "--token-file", str(token_file)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    info = cli("--info")
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    assert shown["has_refresh_token"] and not shown["access_token_valid"] and shown["mode"] == "0o600"
    assert_no_secrets(info.stdout, [REFRESH_TOKEN, CLIENT_SECRET, "old-access-token-value"])
    refreshed = cli("--refresh")
    assert refreshed.returncode == 0 and "refreshed" in refreshed.stdout and token_server.requests == 1
    assert json.loads(cli("--info").stdout)["access_token_valid"] is True
    token_server.fail_with = "invalid_grant"
    failed = cli("--refresh")
    assert failed.returncode == 3 and "invalid_grant" in failed.stderr and "--auth-setup" in failed.stderr


def test_revoke_sends_the_token_in_the_body_and_never_prints_it(tmp_path, token_server):
    """--revoke posts the refresh token in the form body (not the URL); when the endpoint is
    unreachable it says so in one line, keeps the file and prints no token."""
    import sys

    from email_ingestion.sandbox.dovecot import free_port
    from tests.conftest import ROOT
    token_file = tmp_path / "token.json"
    write_token_file(token_file, "old-access-token-value", dt.datetime(2020, 1, 1), token_server.url)
    env = {"PATH": os.environ["PATH"], "GOOGLE_CLIENT_SECRET": CLIENT_SECRET}

    def revoke(uri: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_ingestion.auth.oauth2_gmail", "--revoke", "--revoke-uri",
                               uri, "--token-file", str(token_file)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    unreachable = revoke(f"http://127.0.0.1:{free_port()}/revoke")
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr and token_file.exists()
    assert_no_secrets(unreachable.stdout + unreachable.stderr, [REFRESH_TOKEN, CLIENT_SECRET])
    done = revoke(token_server.url.replace("/token", "/revoke"))
    assert done.returncode == 0, done.stderr
    assert token_server.revoked == [REFRESH_TOKEN] and not token_file.exists()
    assert all(REFRESH_TOKEN not in path for path in token_server.paths)
    assert_no_secrets(done.stdout + done.stderr, [REFRESH_TOKEN, CLIENT_SECRET])


def test_token_endpoint_unreachable_is_retried_not_fatal(tmp_path, mailbox, producer_env, redis_client):
    """Token endpoint down: transient. `--once` retries (3 attempts) and gives up with 1, not 3."""
    from email_ingestion.sandbox.dovecot import free_port
    token_file = tmp_path / "token.json"
    down = f"http://127.0.0.1:{free_port()}/token"
    write_token_file(token_file, "old-access-token-value", dt.datetime(2020, 1, 1), down)
    done = run_producer(oauth_env(producer_env, token_file, down))
    assert done.returncode == 1, done.stderr[-2000:]
    retries = [json.loads(line) for line in done.stderr.splitlines() if "reconnecting after backoff" in line]
    assert len(retries) == 2 and all("TokenEndpointError" in r["error"] for r in retries)
    assert "Traceback" not in done.stderr and token_file.exists()
    assert_no_secrets(done.stderr, [REFRESH_TOKEN, CLIENT_SECRET, "old-access-token-value"])
