#!/usr/bin/env python3
"""End-to-end scaling: M mailboxes x P producers and K workers, on one Redis or a cluster.

    python scripts/bench_scale.py --mailboxes 1 4 16 --producers 1 2 --workers 1 2 4 [--messages 2000]
    python scripts/bench_scale.py --cluster --streams 3 --mailboxes 12 --producers 2 --workers 2

For each combination of the sizes given (their product), on a throwaway Dovecot and a
throwaway redis-server (or a three-master cluster with --cluster): writes a MAILBOXES_FILE
with M fresh folders (spread over --streams streams), starts P `producer.py` processes on it
and K `worker.py` processes (each reading every stream) whose handler records when it saw
each message, waits until the producers have shared the mailboxes out, then APPENDs
--messages messages round-robin over the folders from --feeders IMAP connections, as fast as
Dovecot takes them. Reports, per combination: messages per second from the first APPEND to
the last handler call, and APPEND -> handler latency (p50, p99) per message, counted once;
lost and repeated handler calls are counted too (they must be 0). The reference, measured in
the same run, is how fast Dovecot took the APPENDs: end to end cannot beat it.

Sizes are arguments, so the same script runs unchanged on a bigger machine. On a small one,
every process competes for the same cores: read the figures as what this host gives.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from imapclient import IMAPClient  # noqa: E402

from email_ingestion.common.keys import MailboxKeys  # noqa: E402
from email_ingestion.sandbox.dovecot import DovecotServer  # noqa: E402
from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from email_ingestion.sandbox.sample_mail import sample_message  # noqa: E402

USER, PASSWORD = "bench@example.com", "bench-pw"
RECORD_DIR_ENV = "BENCH_SCALE_RECORD_DIR"


def record(payload: Any, ctx: Any) -> None:
    """The workers' handler (`--handler bench_scale:record`): one line per call, flushed."""
    global _record_file
    if _record_file is None:
        _record_file = open(Path(os.environ[RECORD_DIR_ENV]) / f"{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115
    _record_file.write(f"{payload.message_id}\t{time.time()}\n")


_record_file: Any = None


def imap(port: int) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port, ssl=False)
    client.login(USER, PASSWORD)
    return client


class Run:
    """One combination: its folders, its processes, its records."""

    def __init__(self, args: argparse.Namespace, dovecot: DovecotServer, redis_url: str, sizes: tuple[int, int, int],
                 work: Path) -> None:
        self.args, self.dovecot, self.redis_url = args, dovecot, redis_url
        self.mailboxes, self.producers, self.workers = sizes
        self.work = work / f"m{self.mailboxes}-p{self.producers}-k{self.workers}"
        self.records = self.work / "records"
        self.records.mkdir(parents=True)
        tag = uuid.uuid4().hex[:6]
        self.folders = [f"bench-{tag}-{i:03d}" for i in range(self.mailboxes)]
        self.streams = [f"{{email_ingestion_stream_{i}}}" if args.cluster else f"email_ingestion_stream_{i}"
                        for i in range(args.streams)]
        self.appended: dict[str, float] = {}
        self.feed_s = 0.0
        self.procs: list[subprocess.Popen[bytes]] = []

    def stream_of(self, index: int) -> str:
        return self.streams[index % len(self.streams)]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("IMAP_", "REDIS_", "WORKER_", "PRODUCER_"))}
        return {**keep, "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(self.dovecot.port), "IMAP_SSL": "false",
                "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD, "IMAP_USER": USER,
                "REDIS_URL": self.redis_url, "REDIS_CLUSTER": "true" if self.args.cluster else "false",
                "MAILBOXES_FILE": str(self.work / "mailboxes.toml"), "PRODUCER_LEASE_MS": str(self.args.lease_ms),
                "PRODUCER_METRICS_PORT": "0", "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING",
                "POLL_INTERVAL_SECONDS": "30", RECORD_DIR_ENV: str(self.records),
                "PYTHONPATH": str(ROOT / "scripts")}

    def start(self) -> None:
        client = imap(self.dovecot.port)
        for name in self.folders:
            client.create_folder(name)
        client.logout()
        (self.work / "mailboxes.toml").write_text("".join(
            f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{name}"\nstream = "{self.stream_of(i)}"\n'
            f"max_connections = {max(10, self.mailboxes)}\n\n" for i, name in enumerate(self.folders)))
        env = self.env()
        stream_args = [part for s in self.streams for part in ("--stream", s)]
        for index in range(self.producers):
            self._spawn([str(ROOT / "producer.py")], {**env, "PRODUCER_ID": f"bench-p{index}"}, f"producer{index}")
        for index in range(self.workers):
            self._spawn([str(ROOT / "worker.py"), "--consumer", f"bench-w{index}", "--handler", "bench_scale:record",
                         *stream_args], env, f"worker{index}")

    def _spawn(self, argv: list[str], env: dict[str, str], name: str) -> None:
        log = (self.work / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT, stdout=log, stderr=log))

    def wait_shared_out(self, client: Any, timeout_s: float) -> None:
        """Until every mailbox has an owner and no producer holds more than its fair share."""
        share = -(-self.mailboxes // self.producers)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            keys = [MailboxKeys(self.stream_of(i), USER, name).lease for i, name in enumerate(self.folders)]
            values = [client.get(key) for key in keys]  # one by one: in a cluster they live on several slots
            owners = Counter(v.decode().rsplit(":", 1)[0] for v in values if v)
            if sum(owners.values()) == self.mailboxes and max(owners.values()) <= share:
                return
            time.sleep(0.2)
        raise SystemExit(f"the producers did not share the mailboxes out within {timeout_s:g}s (see {self.work})")

    def feed(self) -> float:
        """APPEND every message; returns when the first went in (epoch seconds)."""
        plan = [(self.folders[i % self.mailboxes], i) for i in range(self.args.messages)]
        started = time.time()
        lock = threading.Lock()

        def feeder(part: list[tuple[str, int]]) -> None:
            client = imap(self.dovecot.port)
            for folder, index in part:
                raw = sample_message(index, seed=hash(self.work.name) % 10_000)
                message_id = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
                with lock:
                    self.appended[message_id] = time.time()
                client.append(folder, raw)
            client.logout()

        threads = [threading.Thread(target=feeder, args=(plan[i::self.args.feeders],)) for i in range(self.args.feeders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.feed_s = time.time() - started
        return started

    def handled(self) -> list[tuple[str, float]]:
        rows = []
        for path in self.records.glob("*.log"):
            for line in path.read_text().splitlines():
                message_id, _, at = line.partition("\t")
                if at:
                    rows.append((message_id, float(at)))
        return rows

    def wait_handled(self, timeout_s: float) -> list[tuple[str, float]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.handled()
            if len({m for m, _ in rows}) >= self.args.messages:
                return rows
            self._check_alive()
            time.sleep(0.2)
        return self.handled()

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a process exited ({proc.returncode}) during the run: see {self.work}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def measure(run: Run, client: Any) -> dict[str, Any]:
    run.start()
    try:
        run.wait_shared_out(client, 120)
        first_append = run.feed()
        rows = run.wait_handled(run.args.timeout)
    finally:
        run.stop()
    first_seen: dict[str, float] = {}
    for message_id, at in sorted(rows, key=lambda r: r[1]):
        first_seen.setdefault(message_id, at)
    latencies = sorted(first_seen[m] - t for m, t in run.appended.items() if m in first_seen)
    last = max(first_seen.values()) if first_seen else first_append
    return {"mailboxes": run.mailboxes, "producers": run.producers, "workers": run.workers,
            "streams": len(run.streams), "messages": run.args.messages,
            "msg_per_s": round(len(first_seen) / max(1e-9, last - first_append)),
            "append_per_s": round(run.args.messages / max(1e-9, run.feed_s)),
            "p50_ms": round(_quantile(latencies, 0.5) * 1000), "p99_ms": round(_quantile(latencies, 0.99) * 1000),
            "lost": run.args.messages - len(first_seen), "repeated": len(rows) - len(first_seen)}


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def start_redis(args: argparse.Namespace, work: Path) -> tuple[Any, str, Any]:
    if args.cluster:
        from email_ingestion.sandbox.cluster import RedisClusterSandbox
        cluster = RedisClusterSandbox(work / "cluster").start()
        return cluster, cluster.url, cluster.client()
    server = RedisServer(work / "redis").start()
    return server, server.url, server.client()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, nargs="+", default=[1, 4, 16], help="M values")
    parser.add_argument("--producers", type=int, nargs="+", default=[1, 2], help="P values")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="K values")
    parser.add_argument("--streams", type=int, default=1, help="mailboxes spread over this many streams")
    parser.add_argument("--messages", type=int, default=2000, help="per combination")
    parser.add_argument("--feeders", type=int, default=4, help="IMAP connections appending")
    parser.add_argument("--lease-ms", type=int, default=6000, help="PRODUCER_LEASE_MS (shorter: faster sharing out)")
    parser.add_argument("--cluster", action="store_true", help="a three-master Redis Cluster instead of one server")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every handler call")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("dovecot", "redis-server"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} not found (apt-get install dovecot-imapd redis-server)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    dovecot = DovecotServer(work / "dovecot", users={USER: PASSWORD}).start()
    redis_sandbox, url, client = start_redis(args, work)
    results = []
    try:
        for sizes in itertools.product(args.mailboxes, args.producers, args.workers):
            if args.cluster:
                for node in redis_sandbox.nodes:
                    node.client().flushall()
            else:
                client.flushall()
            results.append(measure(Run(args, dovecot, url, sizes, work), client))
            if not args.json:
                print(_row(results[-1], args.cluster), flush=True)
    finally:
        redis_sandbox.stop()
        dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"cluster": args.cluster, "cpus": os.cpu_count(), "results": results}))
    return 0 if all(r["lost"] == 0 for r in results) else 1


def _row(result: dict[str, Any], cluster: bool) -> str:
    return (f"{'cluster' if cluster else 'one redis'}: M={result['mailboxes']:>3} P={result['producers']} "
            f"K={result['workers']} streams={result['streams']}: {result['msg_per_s']:>6} msg/s end to end "
            f"(APPENDs alone: {result['append_per_s']} msg/s, ratio {result['msg_per_s'] / result['append_per_s']:.2f}), "
            f"APPEND->handler p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms, "
            f"lost {result['lost']}, repeated {result['repeated']}")


if __name__ == "__main__":
    sys.exit(main())
