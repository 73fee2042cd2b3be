#!/usr/bin/env python3
"""Producer throughput against mbsync, through the same 50 ms round-trip link, in one run.

    python scripts/bench_producer.py [--messages 10000] [--delay-ms 25] [--batch-size 500]
    python scripts/bench_producer.py --large 200000     # big first sync: time, peak RSS
    python scripts/bench_producer.py --latency 40       # APPEND -> stream, over bare IDLE

Seeds a throwaway Dovecot with N ~3 KB messages, lets it index and cache them, puts a
loopback proxy adding `delay-ms` each way in front of it (like a real Gmail connection),
then times, alternating for `--rounds` rounds (best of each counts):
  1. mbsync (isync) pulling the mailbox into a fresh local Maildir (the baseline);
  2. `python producer.py --once` syncing it into an emptied Redis;
and finally a naive client doing one UID FETCH round trip per message (on a sample).
Prints messages per second and ratios. Needs dovecot-imapd, redis-server and isync.

--large N: first sync of an N-message folder against a --messages folder (same ~3 KB
messages, same link, cold Dovecot caches for both): wall time, msg/s and the peak RSS of
the producer and of its payload-building helper, sampled from /proc.
--latency N: N messages appended one at a time to a mailbox a running producer idles on,
while a bare imapclient also idles on it: the producer's share is the time from the bare
client's EXISTS to the entry in the stream (Dovecot's own notification delay excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from imapclient import IMAPClient  # noqa: E402

from email_ingestion.sandbox.dovecot import DovecotServer  # noqa: E402
from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from email_ingestion.sandbox.sample_mail import sample_message  # noqa: E402
from email_ingestion.sandbox.tcp_proxy import TcpProxy  # noqa: E402

USER, PASSWORD = "bench@example.com", "bench-pw"


def warm_up(port: int) -> int:
    """Let Dovecot index and cache the mailbox (a direct full fetch) before anything is timed."""
    client = IMAPClient("127.0.0.1", port, ssl=False)
    client.login(USER, PASSWORD)
    exists = int(client.select_folder("INBOX", readonly=True)[b"EXISTS"])
    uids = client.search(["ALL"])
    for start in range(0, len(uids), 1000):
        client.fetch(uids[start:start + 1000], ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[]"])
    client.logout()
    return exists


def run_mbsync(work: Path, port: int, fsync: bool) -> float:
    work.mkdir()
    config = work / "mbsyncrc"
    local = work / "mbsync-maildir"
    local.mkdir()
    # mbsync fsyncs every message by default (as its users run it); --mbsync-no-fsync turns
    # that off, which makes it much faster and much more variable.
    config.write_text(f"""FSync {"yes" if fsync else "no"}

IMAPAccount bench
Host 127.0.0.1
Port {port}
User {USER}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore bench-remote
Account bench

MaildirStore bench-local
Path {local}/
Inbox {local}/INBOX

Channel bench
Far :bench-remote:
Near :bench-local:
Patterns INBOX
Sync Pull
Create Near
SyncState *
""")
    started = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(config), "bench"], check=True)
    elapsed = time.perf_counter() - started
    count = len(list((local / "INBOX" / "cur").iterdir())) + len(list((local / "INBOX" / "new").iterdir()))
    return count / elapsed


def run_producer(port: int, redis_url: str, batch_size: int, expected: int) -> tuple[float, float]:
    env = {**os.environ, "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(port), "IMAP_SSL": "false",
           "IMAP_USER": USER, "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD,
           "REDIS_URL": redis_url, "BATCH_SIZE": str(batch_size), "PRODUCER_METRICS_PORT": "0",
           "LOG_LEVEL": "WARNING", "REDIS_MAX_STREAM_LENGTH": str(expected * 2)}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "producer.py"), "--once"], env=env, check=True)
    elapsed = time.perf_counter() - started
    import redis
    count = redis.Redis.from_url(redis_url).xlen("email_ingestion_stream")
    if count != expected:
        raise SystemExit(f"producer emitted {count} of {expected}")
    return count / elapsed, elapsed


def run_naive(port: int, sample: int) -> float:
    client = IMAPClient("127.0.0.1", port, ssl=False)
    client.login(USER, PASSWORD)
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["ALL"])[:sample]
    started = time.perf_counter()
    for uid in uids:
        client.fetch([uid], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
    elapsed = time.perf_counter() - started
    client.logout()
    return len(uids) / elapsed


def seed_folder(dovecot: DovecotServer, folder: str, count: int) -> int:
    """`count` ~3 KB messages written straight to disk (1,000 distinct bodies, unique ids)."""
    templates = [sample_message(i, body_bytes=2700) for i in range(1000)]

    def messages() -> Iterator[bytes]:
        for index in range(count):
            raw = templates[index % 1000]
            yield raw.replace(b"<msg-0-%d@" % (index % 1000), b"<big-%d@" % index, 1)
    return dovecot.seed_maildir_with_uids(USER, messages(), folder)


def rss_kb(pid: int) -> tuple[int, int]:
    """(RSS of pid, largest RSS among its children) in KiB, 0 for a process that is gone."""
    def one(p: int) -> int:
        try:
            line = next(x for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS"))
        except (OSError, StopIteration):
            return 0
        return int(line.split()[1])
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    return one(pid), max((one(c) for c in children), default=0)


def timed_sync(port: int, redis_url: str, batch_size: int, folder: str, expected: int) -> dict[str, float]:
    env = {**os.environ, "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(port), "IMAP_SSL": "false",
           "IMAP_USER": USER, "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD, "IMAP_MAILBOX": folder,
           "REDIS_URL": redis_url, "BATCH_SIZE": str(batch_size), "PRODUCER_METRICS_PORT": "0",
           "LOG_LEVEL": "WARNING", "REDIS_MAX_STREAM_LENGTH": str(expected * 2), "IMAP_TIMEOUT_SECONDS": "300"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "producer.py"), "--once"], env=env)
    peak_main = peak_helper = 0
    while proc.poll() is None:
        main_kb, helper_kb = rss_kb(proc.pid)
        peak_main, peak_helper = max(peak_main, main_kb), max(peak_helper, helper_kb)
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    import redis
    count = redis.Redis.from_url(redis_url).xlen("email_ingestion_stream")
    if proc.returncode != 0 or count != expected:
        raise SystemExit(f"producer exited {proc.returncode} after emitting {count} of {expected}")
    return {"messages": count, "wall_s": round(elapsed, 1), "msg_per_s": round(count / elapsed),
            "peak_rss_mb": round(peak_main / 1024), "peak_helper_rss_mb": round(peak_helper / 1024)}


def run_large(args: argparse.Namespace, work: Path, dovecot: DovecotServer, redis_server: RedisServer,
              proxy: TcpProxy) -> dict[str, object]:
    runs = {}
    for name, count in (("small", args.messages), ("large", args.large)):
        seed_folder(dovecot, name, count)
        redis_server.client().flushall()
        runs[name] = timed_sync(proxy.port, redis_server.url, args.batch_size, name, count)
    return {"mode": "large", "round_trip_ms": 2 * args.delay_ms, **runs,
            "throughput_large_vs_small": round(runs["large"]["msg_per_s"] / runs["small"]["msg_per_s"], 2)}


def run_latency(args: argparse.Namespace, work: Path, dovecot: DovecotServer, redis_server: RedisServer,
                proxy: TcpProxy) -> dict[str, object]:
    """Append one message at a time; the producer's share = stream entry - bare IDLE EXISTS."""
    import redis
    env = {**os.environ, "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(dovecot.port), "IMAP_SSL": "false",
           "IMAP_USER": USER, "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD,
           "REDIS_URL": redis_server.url, "PRODUCER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING",
           "POLL_INTERVAL_SECONDS": "600"}
    client = redis.Redis.from_url(redis_server.url)
    producer = subprocess.Popen([sys.executable, str(ROOT / "producer.py")], env=env)
    bare, admin = IMAPClient("127.0.0.1", dovecot.port, ssl=False), IMAPClient("127.0.0.1", dovecot.port, ssl=False)
    bare.login(USER, PASSWORD)
    admin.login(USER, PASSWORD)
    bare.select_folder("INBOX", readonly=True)
    shares, server_delays, last_id = [], [], "0-0"
    try:
        time.sleep(2.0)  # the producer connects and reaches IDLE
        for index in range(args.latency):
            bare.idle()
            appended = time.monotonic()
            admin.append("INBOX", sample_message(index))
            notified = _wait_exists(bare)
            bare.idle_done()
            entries = client.xread({"email_ingestion_stream": last_id}, block=10_000)
            streamed = time.monotonic()
            last_id = entries[0][1][-1][0]
            server_delays.append(notified - appended)
            shares.append(streamed - notified)
            time.sleep(0.3)  # let the producer finish its pass and go back to IDLE
    finally:
        producer.terminate()
        producer.wait(20)
        bare.logout()
        admin.logout()
    return {"mode": "latency", "samples": len(shares), "server_idle_delay_ms": _percentiles(server_delays),
            "producer_share_ms": _percentiles(shares)}


def _wait_exists(client: IMAPClient) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(isinstance(r, tuple) and r[1] == b"EXISTS" for r in client.idle_check(timeout=1)):
            return time.monotonic()
    raise SystemExit("no EXISTS from Dovecot within 30 s")


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(1000 * ordered[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="added each way")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--naive-sample", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--mbsync-no-fsync", action="store_true", help="run mbsync with FSync no")
    parser.add_argument("--large", type=int, default=0, help="big first sync of N messages vs --messages")
    parser.add_argument("--latency", type=int, default=0, help="APPEND -> stream latency over N samples")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.large or args.latency:
        return run_mode(args)
    for tool in ("dovecot", "redis-server", "mbsync"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install dovecot-imapd redis-server isync")
    work = Path(tempfile.mkdtemp(prefix="bench-producer-"))
    dovecot = DovecotServer(work / "dovecot", users={USER: PASSWORD}).start()
    redis_server = RedisServer(work / "redis").start()
    proxy = TcpProxy(dovecot.port, delay_s=args.delay_ms / 1000).start()
    try:
        dovecot.seed_maildir(USER, [sample_message(i, body_bytes=2700) for i in range(args.messages)])
        exists = warm_up(dovecot.port)
        mbsync_rates, producer_runs = [], []
        for round_no in range(args.rounds):  # alternate, so neither always runs first
            mbsync_rates.append(run_mbsync(work / f"m{round_no}", proxy.port, fsync=not args.mbsync_no_fsync))
            redis_server.client().flushall()
            producer_runs.append(run_producer(proxy.port, redis_server.url, args.batch_size, exists))
        mbsync_rate = max(mbsync_rates)
        producer_rate, producer_s = max(producer_runs)
        naive_rate = run_naive(proxy.port, args.naive_sample)
    finally:
        proxy.stop()
        dovecot.stop()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "messages": exists, "round_trip_ms": 2 * args.delay_ms, "batch_size": args.batch_size,
        "mbsync_msg_per_s": round(mbsync_rate), "producer_msg_per_s": round(producer_rate),
        "mbsync_runs": [round(r) for r in mbsync_rates], "producer_runs": [round(r) for r, _ in producer_runs],
        "producer_wall_s": round(producer_s, 2), "naive_per_message_msg_per_s": round(naive_rate, 1),
        "producer_vs_mbsync": round(producer_rate / mbsync_rate, 2),
        "producer_vs_naive": round(producer_rate / naive_rate, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{exists} messages of ~3 KB, {2 * args.delay_ms:.0f} ms round trip, BATCH_SIZE={args.batch_size}")
        fsync = "FSync no" if args.mbsync_no_fsync else "default FSync yes"
        print(f"  mbsync ({fsync})  {mbsync_rate:8.0f} msg/s  (best of {result['mbsync_runs']})")
        print(f"  producer --once            {producer_rate:8.0f} msg/s  (best of {result['producer_runs']}; "
              f"{producer_s:.2f} s, process start to exit)")
        print(f"  one round trip per message {naive_rate:8.1f} msg/s  (sample of {args.naive_sample})")
        print(f"  producer / mbsync = {result['producer_vs_mbsync']}x   producer / naive = {result['producer_vs_naive']}x")
    return 0


def run_mode(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-producer-"))
    dovecot = DovecotServer(work / "dovecot", users={USER: PASSWORD}).start()
    redis_server = RedisServer(work / "redis").start()
    proxy = TcpProxy(dovecot.port, delay_s=args.delay_ms / 1000).start()
    try:
        mode = run_large if args.large else run_latency
        result = mode(args, work, dovecot, redis_server, proxy)
    finally:
        proxy.stop()
        dovecot.stop()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
