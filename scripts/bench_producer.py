#!/usr/bin/env python3
"""Producer throughput against mbsync, through the same 50 ms round-trip link, in one run.

    python scripts/bench_producer.py [--messages 10000] [--delay-ms 25] [--batch-size 500]

Seeds a throwaway Dovecot with N ~3 KB messages, lets it index and cache them, puts a
loopback proxy adding `delay-ms` each way in front of it (like a real Gmail connection),
then times, alternating for `--rounds` rounds (best of each counts):
  1. mbsync (isync) pulling the mailbox into a fresh local Maildir (the baseline);
  2. `python producer.py --once` syncing it into an emptied Redis;
and finally a naive client doing one UID FETCH round trip per message (on a sample).
Prints messages per second and ratios. Needs dovecot-imapd, redis-server and isync.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="added each way")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--naive-sample", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--mbsync-no-fsync", action="store_true", help="run mbsync with FSync no")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
