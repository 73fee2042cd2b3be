"""Load test: fake payloads into a real Redis, K real worker processes, throughput and
handler-start latency percentiles.

    python -m tests.load.load_test --emails N --workers K [--batch-size B] [--rate R]
                                   [--handler-ms MS] [--redis-url URL] [--json]

Without --redis-url it starts a throwaway redis-server. Payloads are produced at --rate per
second (0 = all at once, a backlog) while the workers run; latency is measured from the
stream entry's id (its enqueue time) to the moment the handler starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from email_ingestion.sandbox.sample_payloads import make_payload  # noqa: E402

STREAM = "email_ingestion_stream"


def produce(client, count: int, rate_per_s: float) -> None:
    template = make_payload(0)
    chunk = 500 if rate_per_s <= 0 else max(1, int(rate_per_s / 20))
    started = time.perf_counter()
    for start in range(0, count, chunk):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(start + chunk, count)):
            update = {"idempotency_key": f"load:{index}", "uid": index}
            pipe.xadd(STREAM, {"payload": template.model_copy(update=update).to_json()})
        pipe.execute()
        if rate_per_s > 0:
            ahead_s = (start + chunk) / rate_per_s - (time.perf_counter() - started)
            if ahead_s > 0:
                time.sleep(ahead_s)


def wait_for_consumers(client, count: int, timeout_s: float = 30) -> None:
    """Latency under a steady rate should not include the workers' start-up: wait for
    their heartbeat keys (a blocked XREADGROUP on an empty stream registers no consumer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for _ in client.scan_iter(match="*:hb:load-*", count=1000)) >= count:
            return
        time.sleep(0.05)
    raise SystemExit(f"{count} workers did not start within {timeout_s}s")


def wait_for_all_acked(client, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group = client.xinfo_groups(STREAM)[0]
        if int(group["pending"]) == 0 and group["lag"] == 0:
            return
        time.sleep(0.05)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def run(args: argparse.Namespace, url: str, client, work: Path) -> dict[str, object]:
    env = {**os.environ, "REDIS_URL": url, "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING",
           "WORKER_BLOCK_TIMEOUT_MS": "500", "LOAD_TEST_DIR": str(work),
           "LOAD_TEST_HANDLER_MS": str(args.handler_ms)}
    if args.rate <= 0:
        produce(client, args.emails, 0)
    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    # A backlog is drained with --burst; under a steady rate, workers run until every
    # email is acknowledged and are then stopped with SIGTERM.
    extra += ["--burst"] if args.rate <= 0 else []
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", f"load-{i}",
                                 "--handler", "tests.load.handlers:measure", *extra], env=env, cwd=ROOT)
               for i in range(args.workers)]
    if args.rate > 0:
        wait_for_consumers(client, args.workers)
        produce(client, args.emails, args.rate)
        wait_for_all_acked(client, args.timeout_s)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    codes = [w.wait(timeout=args.timeout_s) for w in workers]
    elapsed_s = time.perf_counter() - started
    latencies = [float(v) for f in work.glob("latency-*.txt") for v in f.read_text().split()]
    return {
        "emails": args.emails, "workers": args.workers, "batch_size": args.batch_size or "default",
        "rate_per_s": args.rate or "backlog", "handler_ms": args.handler_ms, "exit_codes": codes,
        "handled": len(latencies), "elapsed_s": round(elapsed_s, 2),
        "throughput_msg_per_s": round(len(latencies) / elapsed_s),
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "p99": round(percentile(latencies, 99), 1), "max": round(max(latencies), 1),
                       "mean": round(statistics.fmean(latencies), 1)} if latencies else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.load_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--rate", type=float, default=0, help="payloads per second while workers run (0: backlog)")
    parser.add_argument("--handler-ms", type=float, default=0, help="simulated handler work per email")
    parser.add_argument("--redis-url", help="use this Redis (flushes nothing; uses its stream)")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="load-test-"))
    server = None if args.redis_url else RedisServer(work / "redis").start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    import redis
    try:
        result = run(args, url, redis.Redis.from_url(url), work)
    finally:
        if server:
            server.stop()
    if args.json:
        print(json.dumps(result))
    else:
        lat = result["latency_ms"] or {}
        print(f"{result['handled']}/{args.emails} emails, {args.workers} workers: "
              f"{result['throughput_msg_per_s']} msg/s over {result['elapsed_s']} s")
        print(f"handler-start latency ms: p50 {lat.get('p50')}  p95 {lat.get('p95')}  p99 {lat.get('p99')}  "
              f"max {lat.get('max')}")
    return 0 if result["handled"] == args.emails and all(c == 0 for c in result["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
