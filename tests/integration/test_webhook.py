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
    state = {"status": 200, "delay_s": 0.0, "requests": [], "redirects": {}, "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["seen"].append((self.command, self.path, body))
            if self.path in state["redirects"]:
                code, location = state["redirects"][self.path]
                self.send_response(code)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            state["requests"].append((dict(self.headers), body))
            time.sleep(state["delay_s"])
            self.send_response(state["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST  # noqa: N815 - a followed 301/302 arrives as a GET

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    yield state
    httpd.shutdown()
    httpd.server_close()


def call(url: str, timeout_s: float = 60.0) -> None:
    """One handler call. The default timeout is generous: a loopback answer can take seconds
    on a loaded machine, and a tight one turned a 200 into a timeout (RetryLater)."""
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


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_path_is_not_taken_as_success(server, status):
    """A 3xx the handler will not follow fails permanently, naming status and Location; nothing is GET."""
    other = server["url"].replace("127.0.0.1", "localhost")  # another origin for 307/308
    target = other if status in (307, 308) else server["url"].rsplit("/", 1)[0] + "/moved"
    server["redirects"]["/hook"] = (status, target)
    with pytest.raises(PermanentError) as caught:
        call(server["url"])
    assert str(status) in str(caught.value) and target in str(caught.value)
    assert [m for m, _, _ in server["seen"]] == ["POST"] and server["requests"] == []


@pytest.mark.parametrize("status", [307, 308])
def test_same_origin_307_308_are_followed_with_method_and_body(server, status):
    """307/308 to the same origin is followed as a POST carrying the same signed body."""
    server["redirects"]["/hook"] = (status, "/hook2")
    call(server["url"])
    [(headers, body)] = server["requests"]
    assert [(m, p) for m, p, _ in server["seen"]] == [("POST", "/hook"), ("POST", "/hook2")]
    assert server["seen"][0][2] == body and json.loads(body)["uid"] == 1
    assert headers["X-Signature-256"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_redirect_loop_is_a_permanent_failure(server):
    """A same-origin 307 loop stops after a few hops instead of spinning."""
    server["redirects"]["/hook"] = (307, "/hook")
    with pytest.raises(PermanentError, match="redirected more than"):
        call(server["url"])
