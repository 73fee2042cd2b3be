#!/usr/bin/env python3
"""One Gmail account followed through INBOX, 5 labels and All Mail: entries, bytes, newest first.

    python scripts/bench_gmail.py [--messages 10000] [--batch-size 500]

Seeds the test suite's Gmail-like server (tests/support/gmail_server) with N messages, each
in INBOX or archived (All Mail only), plus 0 to 5 of 5 user labels (about 2 KB each, sizes
varying), and runs the producer (a subprocess, MAILBOXES_FILE with the 7 folders) until
every message is on the stream, once with INITIAL_SYNC_ORDER=oldest and once with newest.
Reports per run: message entries (must be N), body bytes downloaded / sum of the distinct
messages' sizes (must be <= 1.05), body downloads, the time from start to the entry of the
newest message, and the total time. Loopback, no added latency: figures compare runs of
this script, not networks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from tests.support.gmail_server.server import GmailServer  # noqa: E402

USER, PASSWORD = "bench@gmail.com", "bench-pw"
LABELS = ["Work", "Family", "Receipts", "Travel", "Newsletters"]
FOLDERS = ["INBOX", *LABELS, "\\\\All"]
STREAM = "email_ingestion_stream"


def message(index: int, rng: random.Random) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * rng.randint(10, 60)).encode()
    return (f"From: Sender {index} <s{index}@example.com>\r\nTo: {USER}\r\nSubject: message {index}\r\n"
            f"Message-ID: <bench-{index}@example.com>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n").encode() + body


def seed(server: GmailServer, count: int) -> tuple[int, int]:
    rng = random.Random(20)
    items = []
    for index in range(count):
        labels = rng.sample(LABELS, rng.randint(0, 5))
        if rng.random() < 0.4:
            labels.append("\\Inbox")
        items.append((message(index, rng), tuple(labels)))
    ids = server.store.add_many(items)
    return sum(len(raw) for raw, _ in items), ids[-1]


def run(server: GmailServer, redis_url: str, client: object, work: Path, order: str, batch: int,
        count: int, newest: int) -> dict[str, object]:
    mailboxes = work / "mailboxes.toml"
    mailboxes.write_text("".join(f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{f}"\nmax_connections = 7\n\n'
                                 for f in FOLDERS))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("IMAP_", "REDIS_"))},
           "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(server.port), "IMAP_SSL": "false", "IMAP_USER": USER,
           "IMAP_AUTH_METHOD": "password", "IMAP_PASSWORD": PASSWORD, "REDIS_URL": redis_url,
           "MAILBOXES_FILE": str(mailboxes), "PRODUCER_METRICS_PORT": "0", "BATCH_SIZE": str(batch),
           "INITIAL_SYNC_ORDER": order, "LOG_LEVEL": "WARNING", "MAX_STREAM_LENGTH": str(count * 2)}
    client.flushall()  # type: ignore[attr-defined]
    server.store.body_downloads.clear()
    server.store.body_bytes = 0
    server.store.commands.clear()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "producer.py")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_newest, first_any, last_id, seen = None, None, "0", 0
    try:
        while seen < count and time.monotonic() - started < 1800:
            for _, entries in client.xread({STREAM: last_id}, block=500, count=1000) or []:  # type: ignore[attr-defined]
                for entry_id, fields in entries:
                    last_id = entry_id
                    seen += 1
                    first_any = first_any or time.monotonic() - started
                    if first_newest is None and json.loads(fields[b"payload"]).get("gmail_msgid") == str(newest):
                        first_newest = time.monotonic() - started
        total = time.monotonic() - started
        time.sleep(3)  # anything more (a duplicate) would arrive now
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    payloads = [json.loads(f[b"payload"]) for _, f in client.xrange(STREAM)]  # type: ignore[attr-defined]
    position = next((i for i, p in enumerate(payloads) if p["gmail_msgid"] == str(newest)), -1)
    return {"order": order, "entries": len(payloads), "newest_at_entry": position,
            "newest_from": payloads[position]["mailbox"] if position >= 0 else None,
            "distinct": len({p["gmail_msgid"] for p in payloads}),
            "body_downloads": sum(server.store.body_downloads.values()),
            "bytes_downloaded": server.store.body_bytes, "seconds_to_first_entry": round(first_any or -1, 2),
            "seconds_to_newest": round(first_newest or -1, 2),
            "seconds_total": round(total, 1), "imap_commands": dict(server.store.commands)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        redis_server = RedisServer(work / "redis").start()
        server = GmailServer(users={USER: PASSWORD}).start()
        try:
            distinct_bytes, newest = seed(server, args.messages)
            client = redis_server.client()
            for order in ("oldest", "newest"):
                figures = run(server, redis_server.url, client, work, order, args.batch_size, args.messages, newest)
                figures["download_ratio"] = round(int(figures["bytes_downloaded"]) / distinct_bytes, 4)  # type: ignore[call-overload]
                print(json.dumps(figures))
        finally:
            server.stop()
            redis_server.stop()


if __name__ == "__main__":
    main()
