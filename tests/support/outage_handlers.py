"""Handlers for the outage tests (issue 19 items 4 and 10), loaded by name into real worker
processes and configured through the environment."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import redis

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext
from tests.support.handlers import record


def _server() -> redis.Redis:
    return redis.Redis(port=int(os.environ["TEST_REDIS_PORT"]))


def _misconf() -> None:
    """A background save that fails (the server's dbfilename is a directory, so the rename
    fails) with stop-writes-on-bgsave-error yes: writes answer MISCONF."""
    server = _server()
    server.config_set("stop-writes-on-bgsave-error", "yes")
    server.bgsave()
    while server.info("persistence")["rdb_last_bgsave_status"] != "err":
        time.sleep(0.02)


def _noreplicas() -> None:
    _server().config_set("min-replicas-to-write", 1)


def _busy() -> None:
    """A read-only script that never ends, from a client of its own, past a lowered
    busy-reply-threshold: every other command answers BUSY until SCRIPT KILL."""
    server = _server()
    server.config_set("busy-reply-threshold", 100)

    def spin() -> None:
        try:
            redis.Redis(port=server.connection_pool.connection_kwargs["port"]).eval("while true do end", 0)
        except redis.RedisError:
            pass  # killed by the test

    threading.Thread(target=spin, daemon=True).start()
    while True:
        try:
            server.ping()
        except redis.ResponseError as exc:
            if "BUSY" in str(exc):
                return
        time.sleep(0.02)


def _clusterdown() -> None:
    """One slot (TEST_CLUSTER_SLOT) unassigned on every node of the cluster
    (TEST_CLUSTER_PORTS): with cluster-require-full-coverage yes the whole cluster answers
    CLUSTERDOWN until the slot is assigned again."""
    nodes = [redis.Redis(port=int(port)) for port in os.environ["TEST_CLUSTER_PORTS"].split(",")]
    for node in nodes:
        node.execute_command("CLUSTER DELSLOTS", int(os.environ["TEST_CLUSTER_SLOT"]))
    while not all(_cluster_failed(node) for node in nodes):
        time.sleep(0.02)


def _cluster_failed(node: redis.Redis) -> bool:
    info = node.execute_command("CLUSTER INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:fail" in text or "'cluster_state': 'fail'" in text


FAULTS = {"misconf": _misconf, "noreplicas": _noreplicas, "busy": _busy, "clusterdown": _clusterdown}


def refuse_after(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Records; after the message whose uid is TEST_FAULT_UID (once per TEST_MARKER_DIR)
    makes Redis refuse (TEST_FAULT: misconf | noreplicas | busy), then keeps the call going
    for TEST_AFTER_FAULT_S so that the lease keeper's renewals meet the refusal too."""
    record(payload, ctx)
    marker = Path(os.environ["TEST_MARKER_DIR"], "fault-done")
    if payload.uid != int(os.environ["TEST_FAULT_UID"]) or marker.exists():
        return
    marker.touch()
    FAULTS[os.environ["TEST_FAULT"]]()
    time.sleep(float(os.environ.get("TEST_AFTER_FAULT_S", "0")))


def _flag() -> Path:
    return Path(os.environ["TEST_OUTAGE_FLAG"])


def downstream(payload: EmailPayload, ctx: HandlerContext) -> None:
    """A handler whose downstream is down while the file TEST_OUTAGE_FLAG exists (the same
    ConnectionError for every message); records otherwise."""
    if _flag().exists():
        raise ConnectionError(f"database at db-{payload.uid % 3}:5432 refused the connection")
    record(payload, ctx)
