"""Handlers: the built-ins and loading a user's own.

A handler is any callable `handler(payload: EmailPayload, ctx: HandlerContext) -> None`, or an
`async def` one (awaited in the same call and under the same timeout: awaiting.py).
Raise `email_ingestion.common.errors.PermanentError` when retrying cannot help (the message goes to the
DLQ at once); any other exception is retried with backoff. Delivery is at-least-once: use
`ctx.idempotency_key` to make the handler's effect exactly-once.

    log                 one line per email (no subject or addresses at INFO)
    noop                do nothing (benchmarks)
    jsonl:PATH          append one JSON object per email, each key written once
    webhook:URL         POST the payload, signed with HMAC-SHA256 (WEBHOOK_SECRET)
    package.module:fn   your own callable (or a factory called with no arguments when
                        given as package.module:fn()), found in WORKER_HANDLER_PATH or the
                        installed packages (user_handlers.py)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.common.settings import RetrySettings
from email_ingestion.worker.awaiting import Awaiting
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.user_handlers import import_handler

Handler = Callable[[EmailPayload, HandlerContext], Any]


def log_handler(payload: EmailPayload, ctx: HandlerContext) -> None:
    ctx.logger.info("email handled", extra={
        "stream_id": ctx.stream_id, "mailbox": payload.mailbox, "uid": payload.uid, "size": payload.size,
        "attachments": len(payload.attachments), "attempt": ctx.attempt})
    ctx.logger.debug("email details", extra={"idempotency_key": ctx.idempotency_key, "subject": payload.subject})


def noop_handler(payload: EmailPayload, ctx: HandlerContext) -> None:
    return None


def load_handler(spec: str, retry: RetrySettings, handler_path: Sequence[str] = ()) -> Handler:
    """Turn a --handler value into a callable; a bad value, or a module that cannot be loaded,
    is a SettingsError. The user's own handler runs through Awaiting (a coroutine handler is
    awaited to its end); the built-ins are plain functions and are called as they are."""
    if spec == "log":
        return log_handler
    if spec == "noop":
        return noop_handler
    if spec.startswith("jsonl:"):
        from email_ingestion.worker.jsonl_handler import JsonlHandler
        return JsonlHandler(spec[len("jsonl:"):])
    if spec.startswith("webhook:"):
        from email_ingestion.worker.webhook_handler import WebhookHandler
        if retry.webhook_timeout_seconds >= retry.handler_timeout_seconds:
            raise SettingsError(f"invalid setting WEBHOOK_TIMEOUT_SECONDS={retry.webhook_timeout_seconds:g}: must be "
                                f"below HANDLER_TIMEOUT_SECONDS={retry.handler_timeout_seconds:g}, or a slow "
                                "endpoint ends the worker instead of failing its message")
        return WebhookHandler(spec[len("webhook:"):], retry.webhook_secret, retry.webhook_timeout_seconds,
                              retry.webhook_ca_file)
    return Awaiting(import_handler(spec, handler_path))
