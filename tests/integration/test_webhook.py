"""The webhook handler against a loopback HTTP server: 200, 500, 400, 429, timeouts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from email_ingestion.common.errors import PermanentError, RetryLater, SettingsError
from email_ingestion.sandbox.sample_payloads import make_payload
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.webhook_handler import WebhookHandler

SECRET = "webhook-secret-abc"


@pytest.fixture
def server():
    state = {"status": 200, "delay_s": 0.0, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state["requests"].append((dict(self.headers), body))
            time.sleep(state["delay_s"])
            self.send_response(state["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    yield state
    httpd.shutdown()
    httpd.server_close()


def call(url: str, timeout_s: float = 2.0) -> None:
    import logging
    payload = make_payload(1)
    ctx = HandlerContext(payload.idempotency_key, 2, "1-0", "w1", logging.getLogger("t"))
    WebhookHandler(url, SecretStr(SECRET), timeout_s)(payload, ctx)


def test_200_is_success_and_the_signature_verifies(server):
    """A 200 is success; the POST has a valid HMAC-SHA256 signature, idempotency key and attempt."""
    call(server["url"])
    [(headers, body)] = server["requests"]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Signature-256"] == expected
    assert headers["X-Idempotency-Key"] == make_payload(1).idempotency_key and headers["X-Attempt"] == "2"
    assert json.loads(body)["uid"] == 1


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_retryable_statuses(server, status):
    """500, 503, 429 and 408 responses raise RetryLater."""
    server["status"] = status
    with pytest.raises(RetryLater):
        call(server["url"])


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_permanent(server, status):
    """Other 4xx responses raise PermanentError."""
    server["status"] = status
    with pytest.raises(PermanentError):
        call(server["url"])


def test_timeout_is_retryable(server):
    """A response slower than the timeout raises RetryLater."""
    server["delay_s"] = 1.0
    with pytest.raises(RetryLater):
        call(server["url"], timeout_s=0.2)


def test_unreachable_is_retryable():
    """An unreachable endpoint raises RetryLater."""
    from email_ingestion.sandbox.dovecot import free_port
    with pytest.raises(RetryLater):
        call(f"http://127.0.0.1:{free_port()}/hook")


def test_unsigned_webhooks_are_refused_at_start():
    """A webhook handler without a secret is refused at start with a SettingsError naming WEBHOOK_SECRET."""
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        WebhookHandler("http://127.0.0.1:1/x", None, 1.0)
