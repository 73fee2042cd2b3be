"""`webhook:URL`: POST the payload as JSON, signed with HMAC-SHA256.

Headers: `X-Signature-256: sha256=<hex of HMAC(secret, body)>` (verify it on the receiving
side before trusting the body), `X-Idempotency-Key`, `X-Attempt`. 2xx is success;
408, 429, 5xx, timeouts and connection errors are retried with backoff; any other 4xx is a
permanent failure (straight to the DLQ).

Redirects are not followed blindly: requests would turn a 301/302 into a GET without the
body, and a 2xx on that GET would count as delivered (issue 10). A 307 or 308 to the same
origin (scheme, host, port) is followed, up to MAX_REDIRECTS hops, with the same method,
body and signature; any other 3xx (301, 302, 303, another origin, too many hops) is a
permanent failure whose reason names the status and the Location.

WEBHOOK_TIMEOUT_SECONDS bounds the whole call, connect to the end of the answer, and at most
MAX_RESPONSE_BYTES of a response body are read (http_post.py): a timeout is retried. A TLS
certificate that does not verify is a permanent failure that says so (WEBHOOK_CA_FILE names
the CA of an endpoint with a private certificate).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import SecretStr

from email_ingestion.common.errors import PermanentError, RetryLater, SettingsError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.http_post import Answer, BoundedPoster, CallTimedOut, TlsNotTrusted, tls_context

RETRYABLE_STATUS = {408, 429}
KEEPS_METHOD_STATUS = {307, 308}  # RFC 9110 §15.4.8/§15.4.9: the method and body must not change
MAX_REDIRECTS = 3


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookHandler:
    def __init__(self, url: str, secret: SecretStr | None, timeout_s: float, ca_file: Path | None = None) -> None:
        if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
            raise SettingsError(f"invalid setting WORKER_HANDLER: webhook URL {url!r} must be http(s)://host/...")
        if secret is None:
            raise SettingsError("missing setting WEBHOOK_SECRET: webhook payloads are always signed")
        try:
            context = tls_context(ca_file)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"invalid setting WEBHOOK_CA_FILE: cannot load {ca_file}: {exc}") from None
        self.url = url
        self._secret = secret.get_secret_value().encode()
        self.timeout_s = timeout_s
        self._poster = BoundedPoster(timeout_s=timeout_s, context=context)

    def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> None:
        body = payload.to_json().encode()
        headers = {"Content-Type": "application/json", "X-Signature-256": signature(self._secret, body),
                   "X-Idempotency-Key": ctx.idempotency_key, "X-Attempt": str(ctx.attempt)}
        status = self._post_following(body, headers, self._poster.deadline())
        if 200 <= status < 300:
            return
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryLater(f"webhook answered HTTP {status}")
        raise PermanentError(f"webhook refused the payload: HTTP {status}")

    def _post_following(self, body: bytes, headers: dict[str, str], deadline: float) -> int:
        """POST, following same-origin 307/308 only, all by one deadline; the final status."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            answer = self._post(url, body, headers, deadline)
            if not 300 <= answer.status < 400:
                return answer.status
            url = self._redirect_target(url, answer.status, answer.location)
        raise PermanentError(f"webhook redirected more than {MAX_REDIRECTS} times (last to {_short(url)})")

    def _post(self, url: str, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
        try:
            return self._poster.post(url, body, headers, deadline)
        except TlsNotTrusted as exc:
            raise PermanentError(f"webhook TLS certificate not trusted ({_short(str(exc))}): set WEBHOOK_CA_FILE "
                                 "to the endpoint's CA, or fix its certificate") from None
        except CallTimedOut as exc:
            raise RetryLater(f"webhook timed out: {exc} (WEBHOOK_TIMEOUT_SECONDS)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RetryLater(f"webhook unreachable: {type(exc).__name__}: {_short(str(exc))}") from None

    @staticmethod
    def _redirect_target(url: str, status: int, location: str | None) -> str:
        target = urljoin(url, location) if location else None
        if status in KEEPS_METHOD_STATUS and target and _origin(target) == _origin(url):
            return target
        raise PermanentError(f"webhook answered a redirect, not followed: HTTP {status}, "
                             f"Location {_short(location) if location else '(none)'}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."
