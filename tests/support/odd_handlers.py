"""Handlers of the kinds users write, loaded by name into real worker processes (issue 19):
coroutines, callables returning awaitables, signatures that cannot take (payload, ctx).

Each records the idempotency key once its body has run, like tests.support.handlers.record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext
from tests.support.handlers import record


def fail_first(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Fails every message's first attempt (to the retry set), records the second."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails on purpose")
    record(payload, ctx)


async def coroutine(payload: EmailPayload, ctx: HandlerContext) -> None:
    """An `async def` handler that really awaits before it records."""
    await asyncio.sleep(0.01)
    record(payload, ctx)


async def coroutine_fails(payload: EmailPayload, ctx: HandlerContext) -> None:
    """An `async def` handler whose body raises after an await: a failure, not a success."""
    await asyncio.sleep(0)
    raise RuntimeError("async body failed")


async def coroutine_hangs(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Never finishes (an await that never returns): HANDLER_TIMEOUT_SECONDS must end it."""
    await asyncio.sleep(3600)


class AsyncCallable:
    """An object whose __call__ is a coroutine function."""

    async def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> None:
        await asyncio.sleep(0)
        record(payload, ctx)


def async_object() -> AsyncCallable:
    return AsyncCallable()


def returns_awaitable(payload: EmailPayload, ctx: HandlerContext) -> Awaitable[None]:
    """A plain function that returns a coroutine (a sync wrapper around an async client)."""
    return coroutine(payload, ctx)


def returns_future(payload: EmailPayload, ctx: HandlerContext) -> Awaitable[None]:
    """A plain function that returns a Future on the running loop, resolved later."""
    loop = asyncio.get_event_loop()
    future: asyncio.Future[None] = loop.create_future()
    loop.call_soon(lambda: (record(payload, ctx), future.set_result(None)))
    return future


def no_arguments() -> None:
    """Cannot take (payload, ctx)."""


def one_argument(payload: EmailPayload) -> None:
    """Cannot take (payload, ctx)."""


def three_required(payload: EmailPayload, ctx: HandlerContext, extra: Any) -> None:
    """Cannot take (payload, ctx): a third argument is required."""


def keyword_only(payload: EmailPayload, *, ctx: HandlerContext) -> None:
    """Cannot take ctx positionally."""


def flexible(*args: Any, **kwargs: Any) -> None:
    """Takes anything: accepted."""
    record(args[0], args[1])


def factory_needs_argument(name: str) -> Any:
    """A factory (`:factory_needs_argument()`) that cannot be called with no arguments."""
    return record


NOT_CALLABLE = 42


def make_generator(payload: EmailPayload, ctx: HandlerContext) -> Any:
    """A `yield` by mistake: calling it runs nothing."""
    record(payload, ctx)
    yield None
