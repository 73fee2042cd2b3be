#!/usr/bin/env python3
"""Redis bytes per message of a mailbox's fingerprint record, and what a batch costs at that size.

    python scripts/bench_fingerprints.py [--messages 1000000] [--checkpoints 1000,10000,100000]

Starts a throwaway redis-server, records `--messages` fingerprints of one mailbox through
the producer's own scripts (StateStore.record_baseline: the same record code as an emit),
and prints at each checkpoint `MEMORY USAGE` of the record key (SAMPLES 0: every field
counted) divided by the fingerprints recorded. For comparison it fills the layout of the
versions before (a hash of "c:<32 hex>" -> "uidvalidity:uid"). At the end it times, at full
size, a re-sync batch (500 fingerprints, all known: the header-only check) and an emit of
500 new messages (gate, record, XADD), best of 5.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from email_ingestion.common.keys import MailboxKeys  # noqa: E402
from email_ingestion.producer.payloads import Emission  # noqa: E402
from email_ingestion.producer.state import StateStore  # noqa: E402
from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402

STREAM = "email_ingestion_stream"
BATCH = 500


def fingerprint(index: int) -> str:
    return f"c:{index:032x}"


def record(store: StateStore, first: int, last: int) -> None:
    for start in range(first, last, BATCH):
        end = min(start + BATCH, last)
        store.record_baseline(7, [fingerprint(i) for i in range(start, end)], end)


def legacy_bytes(client, count: int) -> float:
    key = "legacy:seen"
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.hset(key, fingerprint(index), f"1714567890:{index + 1}")
        if index % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    used = int(client.memory_usage(key, samples=0)) / count
    client.delete(key)
    return used


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--messages", type=int, default=1_000_000)
    args.add_argument("--checkpoints", default="1000,10000,100000")
    opts = args.parse_args()
    checkpoints = sorted({*(int(x) for x in opts.checkpoints.split(",") if x), opts.messages})
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            client = server.client()
            keys = MailboxKeys(STREAM, "bench@example.com", "INBOX")
            store = StateStore(client=client, keys=keys)
            store.start(7, position=0, since_ms=0, baseline_until=opts.messages)
            done, rows = 0, []
            for point in checkpoints:
                record(store, done, point)
                done = point
                used = int(client.memory_usage(keys.fingerprints, samples=0))
                rows.append({"messages": point, "bytes_per_message": round(used / point, 2), "total_bytes": used,
                             "encoding": client.object("encoding", keys.fingerprints).decode()})
            known = [fingerprint(i) for i in range(BATCH)]
            check_s = best_of(5, lambda: store.gated(7, known))
            counter = iter(range(10**9))

            def emit_new() -> None:
                uid = opts.messages + next(counter) * BATCH
                store.emit(7, uid + BATCH, [Emission(f"n:{uid + i}", uid + i + 1, "{}") for i in range(BATCH)])

            emit_s = best_of(5, emit_new)
            result = {"records": rows, "legacy_layout_bytes_per_message": round(legacy_bytes(client, min(
                opts.messages, 1_000_000)), 2), "resync_check_500_ms": round(check_s * 1000, 1),
                "emit_500_new_ms": round(emit_s * 1000, 1), "redis_version": client.info()["redis_version"]}
            print(json.dumps(result, indent=2))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
