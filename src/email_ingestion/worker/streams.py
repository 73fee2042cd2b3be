"""One worker process reading several streams (WORKER_STREAMS=a,b or --stream a --stream b).

Design: one WorkerLoop per stream, each in its own thread with its own Redis client, keys,
processor, retry schedule, DLQ, recovery and heartbeat; the process shares only the stop
signal, the handler spec and one health/metrics server. Why not one loop that round-robins:
- Redis Cluster: streams with different hash tags live in different slots, so one
  XREADGROUP over all of them is refused (CROSSSLOT). A round-robin of one-key reads cannot
  block on all streams at once: it either polls (a busy loop when idle) or blocks on one
  stream while another's new entries wait up to WORKER_BLOCK_TIMEOUT_MS. A loop per stream
  blocks on its own stream and issues only the one-slot commands it always did.
- Fairness: each stream's loop reads and handles its own batches, so a stream with a big
  backlog cannot starve another; they share the CPU (the GIL switches every few ms) and
  the handler's I/O waits overlap.
- Every guarantee is the single-stream code's, unchanged: leases, retries, DLQ, reclaim of
  dead consumers (the consumer name is the same on every stream; each stream's group has
  its own PEL and each stream its own heartbeat key, so a dead worker's entries are found
  and reclaimed on each stream), HANDLER_TIMEOUT_SECONDS, and --burst (the process ends
  once every stream's loop has drained its own stream).
With one stream, its loop runs in the calling thread: the single-stream worker is exactly
what it was, its metrics, keys and /status body included.

Handlers: each stream gets its own handler object (load_handler per loop), so the built-in
handlers share no state between threads; a user's plain function is shared and must be
thread-safe when several streams are read.
A handler call past HANDLER_TIMEOUT_SECONDS still ends the whole process (Python cannot
stop a thread); the other streams' batches in hand then stay pending and are reclaimed like
a crashed worker's, as they are after SIGKILL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.exits import EXIT_OK, run_guarded
from email_ingestion.monitoring.collectors import stream_figures
from email_ingestion.monitoring.health import Live, Liveness
from email_ingestion.worker.loop import WorkerLoop
from email_ingestion.worker.stats import WorkerStats

log = logging.getLogger("email_ingestion.worker")


class JointLiveness:
    """Alive while every stream's loop still running has ticked recently: a stalled stream
    fails /health even when the others are busy."""

    def __init__(self, parts: Sequence[Liveness]) -> None:
        self.parts = list(parts)
        self._retired: set[int] = set()  # ids of loops that ended (a drained --burst stream)

    def retire(self, part: Liveness) -> None:
        self._retired.add(id(part))

    def alive(self) -> bool:
        return all(part.alive() for part in self.parts if id(part) not in self._retired)

    def uptime_s(self) -> float:
        return self.parts[0].uptime_s()


class StreamWorkers:
    def __init__(self, loops: Sequence[WorkerLoop]) -> None:
        if not loops:
            raise ValueError("a worker needs at least one stream")
        self.loops = list(loops)
        self._joint = JointLiveness([loop.liveness for loop in self.loops])

    @property
    def streams(self) -> list[str]:
        return [loop.loop.stream for loop in self.loops]

    @property
    def registry(self) -> CollectorRegistry:
        return self.loops[0].metrics.registry  # one registry, shared through WorkerMetricFamilies

    @property
    def liveness(self) -> Live:
        return self.loops[0].liveness if len(self.loops) == 1 else self._joint

    @property
    def breakers(self) -> list[CircuitBreaker]:
        return [loop.breaker for loop in self.loops]

    def run(self, burst: bool) -> int:
        """Run every stream's loop until stopped (or, with `burst`, each drained); the first
        failing stream stops the others, which finish their batch in hand."""
        statuses = [EXIT_OK] * len(self.loops)
        threads = [threading.Thread(target=self._run_one, args=(index, burst, statuses), daemon=True,
                                    name=f"worker-{loop.loop.stream}") for index, loop in enumerate(self.loops)][1:]
        for thread in threads:
            thread.start()
        self._run_one(0, burst, statuses)
        for thread in threads:
            thread.join()
        return next((status for status in statuses if status != EXIT_OK), EXIT_OK)

    def _run_one(self, index: int, burst: bool, statuses: list[int]) -> None:
        loop = self.loops[index]
        statuses[index] = run_guarded(lambda: loop.run(burst=burst), "worker", log)
        self._joint.retire(loop.liveness)
        if statuses[index] != EXIT_OK:
            loop.stop_event.set()  # the process exits non-zero for its supervisor: stop the others cleanly

    def stop_beating(self) -> None:
        for loop in self.loops:
            try:
                loop.recovery.stop_beating()
            except Exception:  # noqa: BLE001 - Redis may be gone; the heartbeat then expires by itself
                pass

    def ready(self) -> tuple[bool, str]:
        """Ready when every stream's loop is (Redis serves it and its group exists)."""
        if len(self.loops) == 1:
            return self.loops[0].ready()
        for loop in self.loops:
            ok, reason = loop.ready()
            if not ok:
                return False, f"stream {loop.loop.stream}: {reason}"
        return True, "ok"

    def status(self, handler: str) -> dict[str, Any]:
        """The /status body: one stream's as before; several streams' totals and each stream's own."""
        if len(self.loops) == 1:
            return {**self.loops[0].status(), "handler": handler, "figures": _figures(self.loops[0])}
        # Every counter before any figure: a message is acknowledged before it is counted, so
        # figures read later are at least as new as the counters (read the other way round, a
        # body could say "processed 50" with the last batch still pending, issue 18).
        counters = self.stats().counters()
        per_stream = {loop.loop.stream: loop.status() for loop in self.loops}
        for loop in self.loops:
            per_stream[loop.loop.stream]["figures"] = _figures(loop)
        first = self.loops[0]
        return {"component": "worker", "consumer": first.loop.consumer, "streams": list(per_stream),
                "group": first.loop.group, "handler": handler, "counters": counters,
                "circuit_breakers": {b.name: b.snapshot() for b in self.breakers},
                "redis_unavailable": next((loop.redis_wait.reason for loop in self.loops if loop.redis_wait.reason),
                                          None),
                "retries_waiting": sum(int(part["retries_waiting"]) for part in per_stream.values()),
                "figures": _total_figures([part["figures"] for part in per_stream.values()]),
                "per_stream": per_stream}

    def stats(self) -> WorkerStats:
        """Every stream's counters added up; busy_s from the first read to the last settlement."""
        total = WorkerStats()
        for loop in self.loops:
            total.merge(loop.stats)
        return total


def _figures(loop: WorkerLoop) -> dict[str, Any]:
    keys = loop.loop.keys
    return stream_figures(loop.redis, keys.stream, keys.group, keys.dlq)


def _total_figures(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Depths, pending and lag added up over the streams; group_exists when on all of them."""
    totals: dict[str, Any] = {name: sum(int(p[name]) for p in parts) for name in ("stream_depth", "dlq_depth", "pending")}
    lags = [p["lag"] for p in parts if p["lag"] is not None]
    totals["lag"] = sum(lags) if len(lags) == len(parts) else None
    totals["group_exists"] = all(p["group_exists"] for p in parts)
    return totals

