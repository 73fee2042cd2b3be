"""Handlers for the Redis high-availability tests, loaded by name into real workers.

`flaky` records each message it accepts in a per-process file under TEST_RECORD_DIR; it
fails the first attempt of every message whose uid is a multiple of TEST_RETRY_EVERY
(retried with backoff) and fails for good on multiples of TEST_DEAD_EVERY (the DLQ); uid 1
takes TEST_SLOW_FIRST_S seconds on its first attempt.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from email_ingestion.common.errors import PermanentError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext


def _every(name: str) -> int:
    return int(os.environ.get(name, "0"))


def flaky(payload: EmailPayload, ctx: HandlerContext) -> None:
    if payload.uid == 1 and ctx.attempt == 1:  # slow enough for the lease to be renewed
        time.sleep(float(os.environ.get("TEST_SLOW_FIRST_S", "0")))
    dead, retry = _every("TEST_DEAD_EVERY"), _every("TEST_RETRY_EVERY")
    if dead and payload.uid % dead == 0:
        raise PermanentError(f"uid {payload.uid} is refused for good")
    if retry and payload.uid % retry == 0 and ctx.attempt == 1:
        raise RuntimeError(f"uid {payload.uid} fails its first attempt")
    with open(Path(os.environ["TEST_RECORD_DIR"]) / f"{os.getpid()}.txt", "a") as handle:
        handle.write(f"{payload.uid}\n")
