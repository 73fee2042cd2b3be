"""The load test's handler: records handler-start latency (enqueue -> handler start)."""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext

_latencies_ms: list[float] = []


def _flush() -> None:
    if _latencies_ms:
        out = Path(os.environ["LOAD_TEST_DIR"]) / f"latency-{os.getpid()}.txt"
        out.write_text("\n".join(f"{value:.3f}" for value in _latencies_ms))


atexit.register(_flush)


def measure(payload: EmailPayload, ctx: HandlerContext) -> None:
    enqueued_ms = int(ctx.stream_id.split("-", 1)[0])
    _latencies_ms.append(time.time() * 1000 - enqueued_ms)
    delay_ms = float(os.environ.get("LOAD_TEST_HANDLER_MS", "0"))
    if delay_ms:
        time.sleep(delay_ms / 1000)
