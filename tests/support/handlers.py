"""Handlers that tests load by name into real worker processes (`--handler tests.support.handlers:x`).

They are configured through the environment because a worker process is all they get.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.jsonl_handler import JsonlHandler


def _record_file() -> Path:
    return Path(os.environ["TEST_RECORD_DIR"]) / f"{os.getpid()}.txt"


def record(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Append the idempotency key to a per-process file, with no dedup of its own: a
    message handled twice shows up twice."""
    delay_s = float(os.environ.get("TEST_HANDLER_DELAY_S", "0"))
    if delay_s:
        time.sleep(delay_s)
    with open(_record_file(), "a") as handle:
        handle.write(payload.idempotency_key + "\n")


def poison(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Kills its own process on the message whose uid is TEST_POISON_UID, records the rest."""
    if payload.uid == int(os.environ["TEST_POISON_UID"]):
        os.kill(os.getpid(), signal.SIGKILL)
    record(payload, ctx)


class _SlowJsonl:
    def __init__(self) -> None:
        self.jsonl = JsonlHandler(os.environ["TEST_JSONL"])

    def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> None:
        Path(os.environ["TEST_MARKER_DIR"], f"started-{os.getpid()}").touch()
        time.sleep(float(os.environ.get("TEST_HANDLER_DELAY_S", "3")))
        self.jsonl(payload, ctx)


def slow_jsonl() -> _SlowJsonl:
    return _SlowJsonl()


def marked_record(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Touch a per-message 'started' marker in TEST_MARKER_DIR, then behave like `record`."""
    Path(os.environ["TEST_MARKER_DIR"], f"started-{payload.uid}-{os.getpid()}").touch()
    record(payload, ctx)


def hang(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Never returns on the message whose uid is TEST_HANG_UID; records the rest."""
    if payload.uid == int(os.environ["TEST_HANG_UID"]):
        while True:
            time.sleep(3600)
    record(payload, ctx)


def fault_after(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Records; after the message whose uid is TEST_FAULT_UID (once per TEST_MARKER_DIR) it
    breaks Redis before the batch settles: "restart" stops the server (TEST_REDIS_PID) and
    waits until it is gone, "oom" sets maxmemory to 1 byte (TEST_REDIS_PORT)."""
    record(payload, ctx)
    marker = Path(os.environ["TEST_MARKER_DIR"], "fault-done")
    if payload.uid != int(os.environ["TEST_FAULT_UID"]) or marker.exists():
        return
    marker.touch()
    if os.environ["TEST_FAULT"] == "oom":
        import redis
        redis.Redis(port=int(os.environ["TEST_REDIS_PORT"])).config_set("maxmemory", 1)
        return
    pid = int(os.environ["TEST_REDIS_PID"])
    os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
        time.sleep(0.02)
