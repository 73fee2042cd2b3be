"""Issue 9 §5/§8: permanent problems stop with one line and the documented exit status
(2 configuration, 3 credentials) even without --once; passing ones are classified as such.
One test per row of the README's "Errors and exit codes" table that is not covered elsewhere."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest
from imapclient import IMAPClient

from email_ingestion.common.errors import ImapThrottledError, RedisUnavailableError, SettingsError
from email_ingestion.common.redis_client import redis_errors
from email_ingestion.common.settings import ImapSettings
from email_ingestion.imap.session import ImapSession
from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import PASSWORD, USER, UTF8_PASSWORD, UTF8_USER, imap_admin, producer_cmd, stream_payloads, written_keys

# Without --once: a permanent error must end the process by itself, not be retried.
SERVICE_TIMEOUT_S = 60


def run_service(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(producer_cmd(), env=env, capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S)


def assert_one_clear_line(done: subprocess.CompletedProcess[str], status: int, *expected: str) -> None:
    assert done.returncode == status, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if '"ERROR"' in line or line.startswith("producer:")]
    assert len(errors) == 1, done.stderr[-2000:]
    for text in expected:
        assert text in errors[0], errors[0]


def test_missing_mailbox_exits_2_naming_close_folders(mailbox, producer_env, dovecot):
    """IMAP_MAILBOX that does not exist: exit 2, the folders with close names, the separator."""
    client = imap_admin(dovecot)
    client.create_folder(f"{mailbox.name}/Reports")
    client.logout()
    done = run_service({**producer_env, "IMAP_MAILBOX": f"{mailbox.name}.reports"})
    assert_one_clear_line(done, 2, "IMAP_MAILBOX", f"{mailbox.name}/Reports", "hierarchy separator '/'")


def test_untrusted_certificate_exits_2(mailbox, producer_env, dovecot, redis_client):
    """Certificate verification failure is configuration (IMAP_CA_FILE), not a passing fault."""
    done = run_service({**producer_env, "IMAP_SSL": "true", "IMAP_PORT": str(dovecot.ssl_port)})
    assert_one_clear_line(done, 2, "certificate verification failed", "IMAP_CA_FILE")
    assert not written_keys(redis_client)


def test_redis_password_refused_exits_3_and_hides_a_password_with_at_signs(mailbox, producer_env, redis_server):
    """WRONGPASS is a ConnectionError subclass in redis-py; it must not be retried forever.
    The password holds unencoded '@'s: no piece of it may reach the log."""
    client = redis_server.client()
    user = f"u{uuid.uuid4().hex[:8]}"
    client.acl_setuser(user, enabled=True, passwords=["+right-password"], keys=["*"], commands=["+@all"])
    url = f"redis://{user}:wr@ng-pa55@word@127.0.0.1:{redis_server.port}/0"
    done = run_service({**producer_env, "REDIS_URL": url, "LOG_LEVEL": "DEBUG"})
    assert_one_clear_line(done, 3, "Redis refused the credentials")
    for fragment in ("wr@ng", "ng-pa55", "pa55@word", "wr@ng-pa55@word"):
        assert fragment not in done.stderr
    client.acl_deluser(user)


def test_redis_acl_refusing_a_command_exits_2(mailbox, producer_env, redis_server):
    """An ACL user without the producer's commands: a configuration error, exit 2."""
    client = redis_server.client()
    user = f"u{uuid.uuid4().hex[:8]}"
    client.acl_setuser(user, enabled=True, passwords=["+pw-1234"], keys=["*"],
                       commands=["-@all", "+ping", "+auth", "+hello", "+client", "+info", "+select"])
    done = run_service({**producer_env, "REDIS_URL": f"redis://{user}:pw-1234@127.0.0.1:{redis_server.port}/0"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "ACL" in done.stderr
    client.acl_deluser(user)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://:s3cr@t-pw@127.0.0.1:notaport/0"])
def test_malformed_redis_url_exits_2_in_one_line(producer_env, url):
    """A REDIS_URL redis-py cannot parse: one line naming REDIS_URL, no traceback, no password."""
    done = run_service({**producer_env, "REDIS_URL": url})
    assert_one_clear_line(done, 2, "REDIS_URL")
    assert "s3cr" not in done.stderr and "t-pw" not in done.stderr


def test_non_ascii_password_logs_in_with_authenticate_plain(dovecot, producer_env, redis_client):
    """A UTF-8 password (LOGIN cannot carry it) works through AUTHENTICATE PLAIN (RFC 4616)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    client = IMAPClient("127.0.0.1", dovecot.port, ssl=False)
    client.plain_login(UTF8_USER, UTF8_PASSWORD)
    client.create_folder(name)
    client.append(name, sample_message(1))
    client.logout()
    env = {**producer_env, "IMAP_USER": UTF8_USER, "IMAP_PASSWORD": UTF8_PASSWORD, "IMAP_MAILBOX": name}
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p["uid"] for p in stream_payloads(redis_client)] == [1]
    assert UTF8_PASSWORD not in done.stderr


def test_non_ascii_password_without_auth_plain_exits_2(dovecot, producer_env):
    """The same password against a server that does not offer AUTH=PLAIN: exit 2, one line."""
    proxy = TcpProxy(dovecot.port, rewrite=lambda data: data.replace(b" AUTH=PLAIN", b"")).start()
    try:
        env = {**producer_env, "IMAP_USER": UTF8_USER, "IMAP_PASSWORD": UTF8_PASSWORD, "IMAP_PORT": str(proxy.port)}
        done = run_service(env)
    finally:
        proxy.stop()
    assert_one_clear_line(done, 2, "AUTHENTICATE PLAIN")
    assert UTF8_PASSWORD not in done.stderr


# -- passing problems: classified as throttling or unavailability, so the runner backs off --

def session_through(proxy: TcpProxy, mailbox: str, **hooks: Any) -> ImapSession:
    from pydantic import SecretStr

    from email_ingestion.auth.password import PasswordAuthenticator
    settings = ImapSettings(host="127.0.0.1", port=proxy.port, ssl=False, user=USER, mailbox=mailbox,
                            password=SecretStr(PASSWORD), auth_method="password")
    return ImapSession(settings=settings, authenticator=PasswordAuthenticator(password=SecretStr(PASSWORD)), **hooks)


@pytest.mark.parametrize(("server_says", "instead_of"), [
    (b"* BYE [UNAVAILABLE] Server shutting down for maintenance", b"* OK"),
    (b"NO [ALERT] Too many simultaneous connections. (Failure)", b"OK [CAPABILITY"),
    (b"NO [OVERQUOTA] Account exceeded command or bandwidth limits. (Failure)", b"OK [READ-ONLY]"),
], ids=["bye-unavailable", "too-many-connections", "overquota"])
def test_gmail_throttling_answers_are_recognised(mailbox, dovecot, server_says, instead_of):
    """Gmail's refusals (greeting BYE, LOGIN, SELECT) raise ImapThrottledError: longer backoff."""
    def rewrite(data: bytes) -> bytes:
        if instead_of not in data:
            return data
        head, _, tail = data.partition(instead_of)
        line_end = tail.find(b"\r\n")
        return head + server_says + tail[line_end:]
    proxy = TcpProxy(dovecot.port, rewrite=rewrite).start()
    try:
        session = session_through(proxy, mailbox.name)
        with pytest.raises(ImapThrottledError):
            session.connect()
        session.close()
    finally:
        proxy.stop()


def test_ok_throttled_answer_slows_down_and_is_counted(mailbox, dovecot):
    """`OK Success [THROTTLED]` on a FETCH that succeeded: the data is used, the answer is
    counted and the session pauses before the next command."""
    mailbox.append(sample_message(1))
    proxy = TcpProxy(dovecot.port, rewrite=lambda d: d.replace(b"OK Fetch completed", b"OK Success [THROTTLED]")).start()
    counted: list[int] = []
    pauses: list[float] = []
    try:
        session = session_through(proxy, mailbox.name, on_throttled=lambda: counted.append(1),
                                  wait=lambda s: bool(pauses.append(s)))
        session.connect()
        fetched = session.fetch([1], ["RFC822.SIZE", "BODY.PEEK[]"])
        session.fetch([1], ["RFC822.SIZE", "BODY.PEEK[]"])
        session.close()
    finally:
        proxy.stop()
    assert fetched[1].body is not None
    assert len(counted) == 2 and pauses == [5.0, 10.0]


def test_redis_out_of_memory_and_read_only_are_transient(tmp_path):
    """OOM (a ResponseError in redis-py) and READONLY (a replica after failover) are retried
    like a restart, not fatal."""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    try:
        full = primary.client()
        full.config_set("maxmemory", "1")
        full.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(RedisUnavailableError, match="OutOfMemoryError"), redis_errors("a test write"):
            full.set("key", "value")
        read_only = replica.client()
        read_only.replicaof("127.0.0.1", primary.port)
        with pytest.raises(RedisUnavailableError, match="ReadOnlyError"), redis_errors("a test write"):
            read_only.set("key", "value")
    finally:
        replica.stop()
        primary.stop()


def test_settings_error_is_not_retried_by_the_runner():
    """The runner's transient set excludes every configuration error."""
    from email_ingestion.producer.runner import TRANSIENT
    assert not any(issubclass(SettingsError, t) or issubclass(t, SettingsError) for t in TRANSIENT)


@pytest.mark.slow
def test_throttled_ok_reaches_the_producer_metric(mailbox, dovecot, make_settings, redis_client):
    """Wired end to end: a pass whose FETCH answers `OK Success [THROTTLED]` still delivers,
    and email_ingestion_imap_throttled_total counts it."""
    import threading

    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_runner
    mailbox.append(sample_message(1), sample_message(2))
    proxy = TcpProxy(dovecot.port, rewrite=lambda d: d.replace(b"OK Fetch completed", b"OK Success [THROTTLED]")).start()
    try:
        settings = make_settings(IMAP_PORT=proxy.port)
        runner = build_runner(settings, threading.Event(), Redactor(settings.secrets()))
        runner.run(once=True)
    finally:
        proxy.stop()
    assert len(stream_payloads(redis_client)) == 2
    counted = runner.metrics.registry.get_sample_value(
        "email_ingestion_imap_throttled_total", {"account": USER, "mailbox": mailbox.name})
    assert counted is not None and counted >= 1


def test_tls_client_on_a_plaintext_port_exits_2_with_a_hint(mailbox, producer_env, dovecot, redis_client):
    """IMAP_SSL=true against Dovecot's plaintext port: one line naming IMAP_SSL/IMAP_STARTTLS, exit 2, not retried forever."""
    done = run_service({**producer_env, "IMAP_SSL": "true", "IMAP_PORT": str(dovecot.port)})
    assert_one_clear_line(done, 2, "speaks plaintext IMAP, not TLS", "IMAP_STARTTLS=true")
    assert not written_keys(redis_client)


def test_plaintext_client_on_a_tls_port_exits_2_with_a_hint(mailbox, producer_env, dovecot, redis_client):
    """IMAP_SSL=false against Dovecot's implicit-TLS port: no greeting comes; one line naming IMAP_SSL=true, exit 2."""
    done = run_service({**producer_env, "IMAP_SSL": "false", "IMAP_STARTTLS": "false", "IMAP_PORT": str(dovecot.ssl_port),
                        "IMAP_TIMEOUT_SECONDS": "3"})
    assert_one_clear_line(done, 2, "expects TLS from the first byte", "IMAP_SSL=true")
    assert not written_keys(redis_client)
