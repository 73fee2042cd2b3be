"""Redis over TLS (rediss://) against a real `redis-server --tls-port` with a throwaway CA.

Certificate verification is on by default: a server certificate from another CA is
refused with one line naming REDIS_CA_FILE and exit status 3 (a person must act; systemd
does not restart-loop on it), and so is a missing client certificate when the server
asks for one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from email_ingestion.common.exits import EXIT_AUTH
from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import RedisSettings
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sample_payloads import add_payloads
from email_ingestion.sandbox.tls_ca import Certificate, ThrowawayCA, tls_server_args
from tests.conftest import ROOT, producer_cmd

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"


@dataclass
class TlsRedis:
    server: RedisServer
    tls_port: int
    ca: ThrowawayCA
    client_cert: Certificate
    other_ca: ThrowawayCA

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def env(self, ca: ThrowawayCA | None = None, client_cert: bool = True) -> dict[str, str]:
        env = {"REDIS_URL": self.url, "REDIS_CA_FILE": str((ca or self.ca).cert_file)}
        if client_cert:
            env.update(REDIS_CERT_FILE=str(self.client_cert.cert_file), REDIS_KEY_FILE=str(self.client_cert.key_file))
        return env


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    root = tmp_path_factory.mktemp("redis-tls")
    ca = ThrowawayCA(root / "ca")
    tls_port = free_port()
    server = RedisServer(root / "redis", extra_args=tls_server_args(ca, ca.issue("server"), tls_port)).start()
    yield TlsRedis(server, tls_port, ca, ca.issue("client"), ThrowawayCA(root / "other-ca", "other-ca"))
    server.stop()


@pytest.fixture
def tls_env(tls_redis: TlsRedis, producer_env: dict[str, str]) -> dict[str, str]:
    tls_redis.server.client().flushall()
    return {**producer_env, **tls_redis.env(), "WORKER_BLOCK_TIMEOUT_MS": "200", "WORKER_METRICS_PORT": "0"}


def run_worker(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "w1", "--burst",
                           "--handler", "noop", *extra], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_producer_and_worker_over_tls(tls_redis, tls_env, mailbox):
    """producer --once and worker --burst over rediss:// with REDIS_CA_FILE and a client
    certificate: every message flows through and is acknowledged."""
    mailbox.append(*[sample_message(i) for i in range(5)])
    producer = subprocess.run(producer_cmd("--once"), env=tls_env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    assert producer.returncode == 0, producer.stderr[-2000:]
    worker = run_worker(tls_env)
    assert worker.returncode == 0, worker.stderr[-2000:]
    plain = tls_redis.server.client()
    assert plain.xlen(STREAM) == 5
    assert plain.xpending(STREAM, GROUP)["pending"] == 0
    assert plain.xinfo_groups(STREAM)[0]["lag"] == 0


@pytest.mark.parametrize("case", ["other CA", "no CA file"])
def test_refused_certificate_is_one_clear_line_and_exit_3(tls_redis, tls_env, mailbox, case):
    """An untrusted server certificate (another CA, or the system store by default):
    producer, worker and the DLQ tool exit 3 at once with one line that names
    REDIS_CA_FILE, and write nothing."""
    env = {**tls_env, **tls_redis.env(ca=tls_redis.other_ca)}
    if case == "no CA file":
        env.pop("REDIS_CA_FILE")
    add_payloads(tls_redis.server.client(), 3)
    mailbox.append(sample_message(1))
    for proc in (run_worker(env), subprocess.run(producer_cmd("--once"), env=env, cwd=ROOT, capture_output=True,
                                                 text=True, timeout=60)):
        assert proc.returncode == EXIT_AUTH, proc.stderr[-2000:]
        errors = [json.loads(line) for line in proc.stderr.splitlines() if '"ERROR"' in line]
        assert len(errors) == 1 and "REDIS_CA_FILE" in errors[0]["error"], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert tls_redis.server.client().xlen(STREAM) == 3  # the producer wrote nothing
    dlq = subprocess.run([sys.executable, "-m", "email_ingestion.worker.dlq_admin", "stats"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dlq.returncode == EXIT_AUTH and dlq.stderr.count("\n") == 1 and "REDIS_CA_FILE" in dlq.stderr


def test_missing_client_certificate_is_named(tls_redis, tls_env, mailbox):
    """The server wants a client certificate and gets none: TLS 1.3 lets the handshake
    finish and the server then drops the connection (or sends an alert, depending on
    timing), which looks like a server dying; the producer gives up after its attempts
    with a message that names REDIS_CERT_FILE, and writes nothing."""
    env = {k: v for k, v in tls_env.items() if k not in ("REDIS_CERT_FILE", "REDIS_KEY_FILE")}
    mailbox.append(sample_message(1))
    proc = subprocess.run(producer_cmd("--once"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode in (1, EXIT_AUTH), proc.stderr[-2000:]
    errors = [json.loads(line) for line in proc.stderr.splitlines() if '"ERROR"' in line]
    assert len(errors) == 1 and "REDIS_CERT_FILE" in errors[0]["error"], proc.stderr[-2000:]
    assert tls_redis.server.client().xlen(STREAM) == 0


def test_verification_is_on_by_default(tls_redis):
    """make_redis with a rediss:// URL and no CA file verifies against the system store,
    so the throwaway CA's certificate is refused rather than silently accepted."""
    client = make_redis(RedisSettings(url=tls_redis.url))
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        client.ping()
    trusted = make_redis(RedisSettings(url=tls_redis.url, ca_file=tls_redis.ca.cert_file,
                                       cert_file=tls_redis.client_cert.cert_file,
                                       key_file=tls_redis.client_cert.key_file))
    assert trusted.ping()


def test_tls_without_rediss_url_by_setting(tls_redis):
    """REDIS_TLS=true with host/port settings (no URL) speaks TLS too."""
    settings = RedisSettings(host="127.0.0.1", port=tls_redis.tls_port, tls=True, ca_file=tls_redis.ca.cert_file,
                             cert_file=tls_redis.client_cert.cert_file, key_file=tls_redis.client_cert.key_file)
    assert make_redis(settings).ping()


