"""The webhook handler against hostile endpoints (issue 19 item 8), with real worker processes
and a real loopback server: a body trickled after 200, headers trickled forever, a 256 MiB
body, a self-signed certificate. WEBHOOK_TIMEOUT_SECONDS bounds each call as a whole, the
body read is capped, an untrusted certificate fails for good and says why.

Counted from outside: what the server received (each key once), the PEL, the DLQ.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from email_ingestion.sandbox.tls_ca import ThrowawayCA
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.http_post import MAX_RESPONSE_BYTES
from email_ingestion.worker.webhook_handler import WebhookHandler
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys.of(STREAM, GROUP, "email_ingestion_dlq")
SECRET = "webhook-secret-abc"
COUNT = 3
BIG_BYTES = 256 << 20

Answer = Callable[[socket.socket, "Endpoint"], None]


class Endpoint:
    """A loopback HTTP/1.1 server that reads each POST whole, records its idempotency key,
    then answers with `answer` (which may dawdle); counts the body bytes it got out."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.tls = answer, tls
        self.keys: list[str] = []
        self.sent_bytes = 0
        self.connections = 0
        self.closed = 0  # connections ended, by either side
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            while not self.stop.is_set():
                headers = {}
                if not reader.readline():
                    return
                while (line := reader.readline().strip()):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                self.keys.append(headers.get("x-idempotency-key", ""))
                self.answer(conn, self)
        except OSError:
            return  # the client hung up: what these tests expect of it
        finally:
            conn.close()
            self.closed += 1

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def trickled_body(conn: socket.socket, endpoint: Endpoint) -> None:
    """200 with a 1000-byte body sent a byte every 0.2 s (200 s in all)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        if endpoint.stop.wait(0.2):
            return
        conn.sendall(b"x")


def trickled_headers(conn: socket.socket, endpoint: Endpoint) -> None:
    """A status line, then a header byte every 0.2 s, forever."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not endpoint.stop.wait(0.2):
        conn.sendall(b"x")


def huge_body(conn: socket.socket, endpoint: Endpoint) -> None:
    """200 with a 256 MiB body, sent as fast as the client takes it."""
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG_BYTES}\r\n\r\n".encode())
    block = b"\0" * (1 << 16)
    while endpoint.sent_bytes < BIG_BYTES:
        conn.sendall(block)
        endpoint.sent_bytes += len(block)


def ok(conn: socket.socket, endpoint: Endpoint) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def endpoint() -> Iterator[Callable[..., Endpoint]]:
    made: list[Endpoint] = []

    def make(answer: Answer, tls: ssl.SSLContext | None = None) -> Endpoint:
        made.append(Endpoint(answer, tls))
        return made[-1]
    yield make
    for server in made:
        server.close()


def run_worker(redis_url: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "100",
            "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT_SECONDS": "5", "HANDLER_TIMEOUT_SECONDS": "60",
            "MAX_RETRIES": "0", **env}
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "hook", "--burst",
                             "--handler", f"webhook:{url}", "--env-file", os.devnull], env=full, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    code, err = finish(proc, timeout_s=120)
    return subprocess.CompletedProcess(proc.args, code, "", err)


def dead_letters(client) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(KEYS.dlq)]


def test_a_trickled_body_after_200_does_not_outlive_the_webhook_timeout(endpoint, redis_server, redis_client):
    """200 then a body at a byte per 0.2 s (200 s): each call ends by WEBHOOK_TIMEOUT_SECONDS
    as a success (the status is final), not by HANDLER_TIMEOUT_SECONDS ending the worker."""
    server = endpoint(trickled_body)
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, server.url, WEBHOOK_TIMEOUT_SECONDS="4")  # the body would take 200 s
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(Counter(server.keys).values()) == [1] * COUNT  # each delivered once
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0 and not redis_client.exists(KEYS.dlq)


def test_trickled_headers_time_out_and_are_retried(endpoint, redis_server, redis_client):
    """Headers that never end: each call fails at WEBHOOK_TIMEOUT_SECONDS as a timeout (with
    MAX_RETRIES=0, to the DLQ saying so); the worker goes on and exits 0."""
    server = endpoint(trickled_headers)
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, server.url, WEBHOOK_TIMEOUT_SECONDS="1")
    assert done.returncode == 0, done.stderr[-2000:]
    letters = dead_letters(redis_client)
    assert len(letters) == COUNT and all("timed out" in letter["error_message"] for letter in letters)
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_a_huge_body_is_not_read(endpoint):
    """A 256 MiB answer: the call succeeds having read at most MAX_RESPONSE_BYTES; the server
    could push no more than socket buffers hold before the handler hung up."""
    server = endpoint(huge_body)
    payload = make_payload(1)
    handler = WebhookHandler(server.url, SecretStr(SECRET), 5.0)
    handler(payload, HandlerContext(payload.idempotency_key, 1, "1-0", "c", logging.getLogger("t")))
    assert wait_until(lambda: server.closed == 1, timeout_s=60)  # the handler hung up; the send failed
    assert server.keys == [payload.idempotency_key]
    assert server.sent_bytes < 512 * MAX_RESPONSE_BYTES  # 32 MiB at most: socket buffers, not 256 MiB


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    ca = ThrowawayCA(tmp_path_factory.mktemp("webhook-ca"))
    cert = ca.issue("hook")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    return ca.cert_file, context


def test_an_untrusted_certificate_is_a_permanent_failure_that_says_so(endpoint, tls_files, redis_server,
                                                                      redis_client):
    """A certificate from a CA the worker does not trust: every message to the DLQ at once
    (no retries), the reason naming the TLS verification; with WEBHOOK_CA_FILE all succeed."""
    ca_file, context = tls_files
    server = endpoint(ok, tls=context)
    add_payloads(redis_client, COUNT)
    done = run_worker(redis_server.url, server.url, MAX_RETRIES="5")
    assert done.returncode == 0, done.stderr[-2000:]
    letters = dead_letters(redis_client)
    assert len(letters) == COUNT and {letter["reason"] for letter in letters} == {"permanent"}
    assert all("TLS certificate not trusted" in letter["error_message"] for letter in letters)
    assert server.keys == []  # nothing was sent over the untrusted connection
    redis_client.delete(KEYS.dlq)
    add_payloads(redis_client, COUNT, start=COUNT)
    done = run_worker(redis_server.url, server.url, WEBHOOK_CA_FILE=str(ca_file))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(set(server.keys)) == len(server.keys) == COUNT and not redis_client.exists(KEYS.dlq)


def test_keep_alive_connection_is_reused(endpoint):
    """Small answers keep the connection: three calls, one TCP connection."""
    server = endpoint(ok)
    handler = WebhookHandler(server.url, SecretStr(SECRET), 5.0)
    for uid in range(3):
        payload = make_payload(uid)
        handler(payload, HandlerContext(payload.idempotency_key, 1, "1-0", "c", logging.getLogger("t")))
    assert len(server.keys) == 3 and server.connections == 1


def test_a_connection_the_endpoint_closed_while_idle_is_replaced(endpoint):
    """The endpoint closes each connection after answering (no Connection: close): the next
    call notices on the idle connection and posts once on a new one."""
    def ok_then_hang_up(conn: socket.socket, endpoint: Endpoint) -> None:
        ok(conn, endpoint)
        conn.shutdown(socket.SHUT_RDWR)
    server = endpoint(ok_then_hang_up)
    handler = WebhookHandler(server.url, SecretStr(SECRET), 5.0)
    for uid in range(3):
        payload = make_payload(uid)
        handler(payload, HandlerContext(payload.idempotency_key, 1, "1-0", "c", logging.getLogger("t")))
        # Idle: the endpoint has closed before the next call (a close racing a request in
        # flight is another case: that request may arrive and lose its answer, and is repeated).
        assert wait_until(lambda n=uid + 1: server.closed == n, timeout_s=30)
    assert sorted(server.keys) == sorted(make_payload(uid).idempotency_key for uid in range(3))
    assert server.connections == 3


def test_a_webhook_timeout_above_the_handler_timeout_is_a_bad_setting(redis_server, redis_client):
    """WEBHOOK_TIMEOUT_SECONDS at or above HANDLER_TIMEOUT_SECONDS: exit 2 at start, one line."""
    done = run_worker(redis_server.url, "http://127.0.0.1:9/hook", WEBHOOK_TIMEOUT_SECONDS="60")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "WEBHOOK_TIMEOUT_SECONDS" in lines[0], done.stderr


def test_a_name_that_never_resolves_is_bounded_too(endpoint, monkeypatch):
    """A resolver that hangs (stood in for by a getaddrinfo that waits): the call ends at
    WEBHOOK_TIMEOUT_SECONDS as a retryable timeout naming the resolution; then the name
    resolves and the next call is delivered."""
    from email_ingestion.common.errors import RetryLater
    server = endpoint(ok)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "hook.test":
            release.wait(60)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", slow)
    handler = WebhookHandler(f"http://hook.test:{port}/hook", SecretStr(SECRET), 3.0)
    payload = make_payload(1)
    ctx = HandlerContext(payload.idempotency_key, 1, "1-0", "c", logging.getLogger("t"))
    with pytest.raises(RetryLater, match="not resolved in time"):
        handler(payload, ctx)
    release.set()
    handler(payload, ctx)
    assert server.keys == [payload.idempotency_key]
