#!/usr/bin/env python3
"""What REDIS_WAIT_REPLICAS=1 costs: producer and worker throughput with 0 and 1, one run.

    python scripts/bench_wait.py [--messages 3000] [--worker-messages 20000] [--batch-sizes 500,20]

Starts a throwaway master with one replica (loopback) and a Dovecot seeded with N ~3 KB
messages, then times, alternating for `--rounds` rounds (best of each counts):
  1. after a warm-up pass, `python producer.py --once` into the emptied master, for each BATCH_SIZE, with
     REDIS_WAIT_REPLICAS=0 and =1 (one WAIT per emitted batch);
  2. `python worker.py --handler noop --burst` over a preloaded stream, with 0 and 1
     (one WAIT per settled batch);
  3. StateStore.emit in-process with one message per call (a WAIT per message: the worst
     case, what a producer woken by IDLE for each new message pays).
Prints messages per second and the with/without ratio. On loopback a replica acknowledges
in well under a millisecond: across a network, add one round trip to each WAIT.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from email_ingestion.sandbox.dovecot import DovecotServer  # noqa: E402
from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from email_ingestion.sandbox.sample_mail import sample_message  # noqa: E402
from email_ingestion.sandbox.sample_payloads import make_payload  # noqa: E402

USER, PASSWORD = "bench@example.com", "bench-pw"
STREAM = "email_ingestion_stream"


def producer_rate(dovecot: DovecotServer, master: RedisServer, wait: int, batch: int, expected: int) -> float:
    master.client().flushall()
    env = {**os.environ, "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(dovecot.port), "IMAP_SSL": "false",
           "IMAP_USER": USER, "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD, "REDIS_URL": master.url,
           "BATCH_SIZE": str(batch), "PRODUCER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING",
           "REDIS_WAIT_REPLICAS": str(wait), "REDIS_MAX_STREAM_LENGTH": str(expected * 2)}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "producer.py"), "--once"], env=env, check=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if master.client().xlen(STREAM) != expected:
        raise SystemExit("the producer did not emit every message")
    return expected / elapsed


def preload(master: RedisServer, count: int) -> None:
    client = master.client()
    client.flushall()
    template = make_payload(0)
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(start + 5000, count)):
            pipe.xadd(STREAM, {"payload": template.model_copy(
                update={"idempotency_key": f"bench:{index}", "uid": index}).to_json()})
        pipe.execute()


def worker_rate(master: RedisServer, wait: int, count: int) -> float:
    preload(master, count)
    env = {**os.environ, "REDIS_URL": master.url, "REDIS_WAIT_REPLICAS": str(wait), "LOG_LEVEL": "WARNING",
           "WORKER_BLOCK_TIMEOUT_MS": "100", "WORKER_METRICS_PORT": "0"}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "bench", "--handler", "noop", "--burst"],
                   env=env, check=True, cwd=ROOT)
    return count / (time.perf_counter() - started)


def emit_rate(master: RedisServer, wait: int, calls: int) -> float:
    """StateStore.emit in-process, one message per call: the worst case, a WAIT per message."""
    from email_ingestion.common.keys import MailboxKeys
    from email_ingestion.common.redis_client import Replication, make_redis
    from email_ingestion.common.settings import RedisSettings
    from email_ingestion.producer.payloads import Emission
    from email_ingestion.producer.state import StateStore
    master.client().flushall()
    store = StateStore(make_redis(RedisSettings(url=master.url)), MailboxKeys(STREAM, USER, "INBOX"),
                       Replication(wait, 1000))
    payload = make_payload(0).to_json()
    started = time.perf_counter()
    for uid in range(1, calls + 1):
        store.emit(1, uid, [Emission(uid=uid, fingerprint=f"f{uid}", payload=payload)])
    return calls / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="in the mailbox, for the producer")
    parser.add_argument("--worker-messages", type=int, default=20_000)
    parser.add_argument("--batch-sizes", default="500,20", help="producer BATCH_SIZE values")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--emits", type=int, default=3000, help="in-process StateStore.emit calls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-wait-"))
    master = RedisServer(work / "master").start()
    replica = RedisServer(work / "replica", extra_args=("--replicaof", "127.0.0.1", str(master.port))).start()
    dovecot = DovecotServer(work / "dovecot", users={USER: PASSWORD}).start()
    results: dict[str, dict[int, list[float]]] = {}
    try:
        dovecot.seed_maildir(USER, [sample_message(i, body_bytes=2700) for i in range(args.messages)])
        producer_rate(dovecot, master, 0, 500, args.messages)  # warm-up: Dovecot indexes and caches
        for round_no in range(args.rounds):
            for wait in ((0, 1) if round_no % 2 == 0 else (1, 0)):  # alternate which runs first
                for batch in (int(b) for b in args.batch_sizes.split(",")):
                    rate = producer_rate(dovecot, master, wait, batch, args.messages)
                    results.setdefault(f"producer BATCH_SIZE={batch}", {}).setdefault(wait, []).append(rate)
                rate = worker_rate(master, wait, args.worker_messages)
                results.setdefault("worker --burst (noop)", {}).setdefault(wait, []).append(rate)
                rate = emit_rate(master, wait, args.emits)
                results.setdefault("emit, 1 message per call", {}).setdefault(wait, []).append(rate)
    finally:
        dovecot.stop()
        replica.stop()
        master.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    return 0


def report(results: dict[str, dict[int, list[float]]], args: argparse.Namespace) -> None:
    rows = {name: {"wait_0_msg_per_s": round(max(runs[0])), "wait_1_msg_per_s": round(max(runs[1])),
                   "ratio": round(max(runs[1]) / max(runs[0]), 2)} for name, runs in results.items()}
    if args.json:
        print(json.dumps(rows))
        return
    print(f"master + 1 replica on loopback; producer over {args.messages} messages, worker over "
          f"{args.worker_messages}; best of {args.rounds}")
    for name, row in rows.items():
        print(f"  {name:28s} WAIT 0: {row['wait_0_msg_per_s']:7d} msg/s   WAIT 1: {row['wait_1_msg_per_s']:7d} msg/s"
              f"   ratio {row['ratio']}")


if __name__ == "__main__":
    sys.exit(main())
