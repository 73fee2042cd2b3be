#!/usr/bin/env python3
"""One worker process against the ceiling of a bare redis-py loop, in the same run.

    python scripts/bench_worker.py [--messages 100000] [--batch-size N]

Pre-loads N payloads of ~3.5 KB into a throwaway redis-server, then times, alternating for
`--rounds` rounds (the machine's noise hits both alike; the best of each counts):
  1. the reference (issue 10): one process, redis-py with decode_responses=True,
     XREADGROUP COUNT 500, json.loads of each payload, SET done:<key> 1 NX EX 604800 per
     message and one XACK per batch, pipelined;
  2. `python worker.py --handler email_ingestion.worker.handlers:noop_handler --burst` with
     default settings (one process), timed from process start to exit;
and once, the naive style for reference: COUNT 10 and four round trips per message.
Prints messages per second and the worker/ceiling ratio, and, because a shared machine's
load moves wall-clock rates by more than the difference measured, the CPU seconds each side
used (its own process plus redis-server's, from INFO cpu): a ratio the load barely moves.
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

import redis  # noqa: E402

from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from email_ingestion.sandbox.sample_payloads import make_payload  # noqa: E402

STREAM = "email_ingestion_stream"


def preload(client: redis.Redis, count: int) -> int:
    client.delete(STREAM)
    template = make_payload(0)
    size = 0
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(start + 5000, count)):
            data = template.model_copy(update={"idempotency_key": f"bench:{index}", "uid": index}).to_json()
            size = len(data)
            pipe.xadd(STREAM, {"payload": data})
        pipe.execute()
    return size


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def ceiling(port: int, count: int) -> float:
    client = redis.Redis(port=port, decode_responses=True)
    client.xgroup_create(STREAM, "ceiling", id="0")
    started = time.perf_counter()
    done = 0
    while done < count:
        reply = client.xreadgroup("ceiling", "c", {STREAM: ">"}, count=500)
        entries = reply[0][1] if reply else []
        pipe = client.pipeline(transaction=False)
        for _, fields in entries:
            key = json.loads(fields["payload"])["idempotency_key"]
            pipe.set(f"done:{key}", "1", nx=True, ex=604_800)
        pipe.xack(STREAM, "ceiling", *[entry_id for entry_id, _ in entries])
        pipe.execute()
        done += len(entries)
    return count / (time.perf_counter() - started)


def naive(client: redis.Redis, count: int) -> float:
    client.xgroup_create(STREAM, "naive", id="0")
    started = time.perf_counter()
    done = 0
    while done < count:
        reply = client.xreadgroup("naive", "n", {STREAM: ">"}, count=10)
        for entry_id, fields in reply[0][1] if reply else []:
            key = json.loads(fields[b"payload"])["idempotency_key"]
            client.get(f"naive:{key}")
            client.set(f"naive:{key}", "1", ex=3600)
            client.xack(STREAM, "naive", entry_id)
            done += 1
    return count / (time.perf_counter() - started)


def worker(url: str, count: int, batch_size: int | None) -> tuple[float, float, float]:
    """(loop rate: first delivery to last settlement, as the worker logs it; process start to
    exit; the process's CPU seconds)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "REDIS_"))},
           "REDIS_URL": url, "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}
    extra = ["--batch-size", str(batch_size)] if batch_size else []
    with tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "bench", "--handler",
                                 "email_ingestion.worker.handlers:noop_handler", "--burst", *extra],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        whole_s = time.perf_counter() - started
        err.seek(0)
        lines = err.read().splitlines()
    if status != 0:
        raise SystemExit(f"worker exited {status}: {lines[-3:]}")
    stopped = next(json.loads(line) for line in lines if '"worker stopped"' in line)
    if stopped["processed"] != count:
        raise SystemExit(f"worker processed {stopped['processed']} of {count}")
    return count / stopped["busy_s"], count / whole_s, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, help="default: WORKER_BATCH_SIZE's default")
    parser.add_argument("--naive-messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the best counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server not found: apt-get install redis-server")
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    server = RedisServer(work).start()
    client = server.client()
    ceiling_runs, worker_runs, process_runs, cpu_ratios = [], [], [], []
    try:
        for _ in range(args.rounds):
            client.flushall()
            size = preload(client, args.messages)
            redis_before, own_before = redis_cpu_s(client), time.process_time()
            ceiling_runs.append(ceiling(server.port, args.messages))
            ceiling_cpu_s = time.process_time() - own_before + redis_cpu_s(client) - redis_before
            redis_before = redis_cpu_s(client)
            loop_rate, process_rate, worker_cpu_s = worker(server.url, args.messages, args.batch_size)
            worker_cpu_s += redis_cpu_s(client) - redis_before
            worker_runs.append(loop_rate)
            process_runs.append(process_rate)
            cpu_ratios.append(ceiling_cpu_s / worker_cpu_s)
        client.flushall()
        preload(client, args.naive_messages)
        naive_rate = naive(client, args.naive_messages)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    ceiling_rate, worker_rate = max(ceiling_runs), max(worker_runs)
    ratios = [p / c for p, c in zip(process_runs, ceiling_runs, strict=True)]
    result = {"messages": args.messages, "payload_bytes": size, "ceiling_msg_per_s": round(ceiling_rate),
              "worker_msg_per_s": round(worker_rate), "naive_msg_per_s": round(naive_rate),
              "worker_vs_ceiling": round(worker_rate / ceiling_rate, 2),
              "worker_process_msg_per_s": round(max(process_runs)),
              "process_vs_reference": [round(r, 2) for r in ratios],
              "ceiling_runs": [round(r) for r in ceiling_runs], "worker_runs": [round(r) for r in worker_runs],
              "reference_cpu_vs_worker_cpu": [round(r, 2) for r in cpu_ratios],
              "load_average": [round(v, 1) for v in os.getloadavg()]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.messages} payloads of {size} bytes, one process each")
        print(f"  ceiling (bare redis-py loop)   {ceiling_rate:8.0f} msg/s  (best of {result['ceiling_runs']})")
        print(f"  worker.py --handler noop       {worker_rate:8.0f} msg/s  (best of {result['worker_runs']}; "
              "its loop, first delivery to last ack)")
        print(f"  the same, process start to exit {max(process_runs):7.0f} msg/s")
        print(f"  naive (COUNT 10, 4 RTT/msg)    {naive_rate:8.0f} msg/s")
        print(f"  worker loop / reference = {result['worker_vs_ceiling']}")
        print(f"  worker process (start to exit) / reference, per round = {result['process_vs_reference']}")
        print(f"  reference CPU s / worker CPU s (each with redis-server's), per round = "
              f"{result['reference_cpu_vs_worker_cpu']}  (load average {result['load_average']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
