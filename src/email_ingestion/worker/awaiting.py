"""Handlers that are coroutines, or return awaitables, run to the end (issue 19 item 2).

Calling an `async def` handler only creates a coroutine; counted as success, its message
would be acknowledged with its body never run. Every user handler is called through
`Awaiting`: what the call returns, when awaitable (a coroutine, a Future, an object with
`__await__`), is run to completion on the calling thread's own event loop, so the await
happens inside the same call the worker times (HANDLER_TIMEOUT_SECONDS) and an exception
raised after an await is that message's failure. A generator (a `yield` in the handler by
mistake) never runs its body: it is a failure that says so.

One event loop per worker thread (each stream has its own loop thread), made on the
thread's first call and set as its current loop, so a plain function that asks for
`asyncio.get_event_loop()` and returns a Future works too. The loop lives as long as the
thread: tasks a handler spawns and leaves running go on at its next call, never between.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext


class HandlerReturnedGeneratorError(TypeError):
    """The handler returned a generator: its body (before the first yield) never ran."""


class Awaiting:
    """`handler(payload, ctx)`, awaited when what it returns is awaitable."""

    def __init__(self, handler: Callable[[EmailPayload, HandlerContext], Any]) -> None:
        self.handler = handler
        self._local = threading.local()

    def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> Any:
        loop = self._loop()
        result = self.handler(payload, ctx)
        if inspect.isawaitable(result):
            return loop.run_until_complete(_awaited(result))
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            raise HandlerReturnedGeneratorError(
                "the handler returned a generator (a `yield` in it?): its body never ran")
        return result

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            self._local.loop = loop
        # Set at every call: a handler that ran asyncio.run() left the thread without one.
        asyncio.set_event_loop(loop)
        return loop

    def __repr__(self) -> str:
        return f"Awaiting({self.handler!r})"


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    # run_until_complete takes futures and coroutines; any other awaitable goes through here.
    return await awaitable
