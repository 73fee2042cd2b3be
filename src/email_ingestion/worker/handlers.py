"""Handlers: the built-ins and loading a user's own.

A handler is any callable `handler(payload: EmailPayload, ctx: HandlerContext) -> None`.
Raise `email_ingestion.common.errors.PermanentError` when retrying cannot help (the message goes to the
DLQ at once); any other exception is retried with backoff. Delivery is at-least-once: use
`ctx.idempotency_key` to make the handler's effect exactly-once.

    log                 one line per email (no subject or addresses at INFO)
    noop                do nothing (benchmarks)
    jsonl:PATH          append one JSON object per email, each key written once
    webhook:URL         POST the payload, signed with HMAC-SHA256 (WEBHOOK_SECRET)
    package.module:fn   your own callable (or a factory called with no arguments when
                        given as package.module:fn())
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.common.settings import RetrySettings
from email_ingestion.worker.context import HandlerContext

Handler = Callable[[EmailPayload, HandlerContext], Any]


def log_handler(payload: EmailPayload, ctx: HandlerContext) -> None:
    ctx.logger.info("email handled", extra={
        "stream_id": ctx.stream_id, "mailbox": payload.mailbox, "uid": payload.uid, "size": payload.size,
        "attachments": len(payload.attachments), "attempt": ctx.attempt})
    ctx.logger.debug("email details", extra={"idempotency_key": ctx.idempotency_key, "subject": payload.subject})


def noop_handler(payload: EmailPayload, ctx: HandlerContext) -> None:
    return None


def load_handler(spec: str, retry: RetrySettings) -> Handler:
    """Turn a --handler value into a callable; a bad value is a SettingsError."""
    if spec == "log":
        return log_handler
    if spec == "noop":
        return noop_handler
    if spec.startswith("jsonl:"):
        from email_ingestion.worker.jsonl_handler import JsonlHandler
        return JsonlHandler(spec[len("jsonl:"):])
    if spec.startswith("webhook:"):
        from email_ingestion.worker.webhook_handler import WebhookHandler
        return WebhookHandler(spec[len("webhook:"):], retry.webhook_secret, retry.webhook_timeout_seconds)
    return _import(spec)


def _import(spec: str) -> Handler:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SettingsError(f"invalid setting WORKER_HANDLER: {spec!r} is not log, noop, jsonl:PATH, "
                            "webhook:URL or package.module:callable")
    factory = attr.endswith("()")
    try:
        target = getattr(importlib.import_module(module_name), attr.removesuffix("()"))
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"invalid setting WORKER_HANDLER: cannot load {spec!r}: {exc}") from None
    handler = target() if factory else target
    if not callable(handler):
        raise SettingsError(f"invalid setting WORKER_HANDLER: {spec!r} is not callable")
    logging.getLogger(__name__).debug("loaded handler", extra={"handler": spec})
    return handler  # type: ignore[no-any-return]
