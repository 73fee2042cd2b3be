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
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urljoin, urlsplit

from pydantic import SecretStr

from email_ingestion.common.errors import PermanentError, RetryLater, SettingsError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext

RETRYABLE_STATUS = {408, 429}
KEEPS_METHOD_STATUS = {307, 308}  # RFC 9110 §15.4.8/§15.4.9: the method and body must not change
MAX_REDIRECTS = 3


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookHandler:
    def __init__(self, url: str, secret: SecretStr | None, timeout_s: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"invalid setting WORKER_HANDLER: webhook URL {url!r} must start with http(s)://")
        if secret is None:
            raise SettingsError("missing setting WEBHOOK_SECRET: webhook payloads are always signed")
        import requests  # heavy; only workers that post need it

        self.url = url
        self._secret = secret.get_secret_value().encode()
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._requests = requests

    def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> None:
        body = payload.to_json().encode()
        headers = {"Content-Type": "application/json", "X-Signature-256": signature(self._secret, body),
                   "X-Idempotency-Key": ctx.idempotency_key, "X-Attempt": str(ctx.attempt)}
        status = self._post_following(body, headers)
        if 200 <= status < 300:
            return
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryLater(f"webhook answered HTTP {status}")
        raise PermanentError(f"webhook refused the payload: HTTP {status}")

    def _post_following(self, body: bytes, headers: dict[str, str]) -> int:
        """POST, following same-origin 307/308 only; the final status."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._post(url, body, headers)
            if not 300 <= response.status_code < 400:
                return int(response.status_code)
            url = self._redirect_target(url, response.status_code, response.headers.get("Location"))
        raise PermanentError(f"webhook redirected more than {MAX_REDIRECTS} times (last to {_short(url)})")

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
        try:
            return self._session.post(url, data=body, headers=headers, timeout=self.timeout_s, allow_redirects=False)
        except self._requests.RequestException as exc:
            raise RetryLater(f"webhook unreachable: {type(exc).__name__}") from None

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
