"""`webhook:URL`: POST the payload as JSON, signed with HMAC-SHA256.

Headers: `X-Signature-256: sha256=<hex of HMAC(secret, body)>` (verify it on the receiving
side before trusting the body), `X-Idempotency-Key`, `X-Attempt`. 2xx is success;
408, 429, 5xx, timeouts and connection errors are retried with backoff; any other 4xx is a
permanent failure (straight to the DLQ).
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from email_ingestion.common.errors import PermanentError, RetryLater, SettingsError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext

RETRYABLE_STATUS = {408, 429}


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
        try:
            response = self._session.post(self.url, data=body, headers=headers, timeout=self.timeout_s)
        except self._requests.RequestException as exc:
            raise RetryLater(f"webhook unreachable: {type(exc).__name__}") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryLater(f"webhook answered HTTP {status}")
        raise PermanentError(f"webhook refused the payload: HTTP {status}")
