"""Memory of the Gmail identity store (issue 20): bytes per message at N messages.

Fills one account's identity store on a throwaway redis-server with N X-GM-MSGIDs (spaced
as Gmail's are: time-ordered 64-bit numbers) and typical label sets, written as the
producer writes them (keys.gmail_identity buckets, producer/gmail_identity.encode_labels),
and reports INFO used_memory per message. Also a single big hash, for comparison.

    .venv/bin/python scripts/gmail_identity_memory.py --messages 1000000
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from email_ingestion.common.keys import gmail_identity
from email_ingestion.producer.gmail_identity import encode_labels
from email_ingestion.sandbox.redis_server import RedisServer

LABEL_SETS = [("\\Inbox",), ("\\Inbox", "\\Important"), (), ("Receipts",), ("\\Sent",), ("Work", "\\Important"),
              ("\\Inbox", "Newsletters")]


def fill(client: object, count: int, bucketed: bool) -> None:
    rng = random.Random(7)
    msgid = 1_600_000_000_000_000_000
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for index in range(count):
        msgid += rng.randint(1 << 16, 1 << 24)
        key = gmail_identity("email_ingestion_stream", "alice@gmail.com", str(msgid)) if bucketed else "one-hash"
        pipe.hset(key, str(msgid), encode_labels(rng.choice(LABEL_SETS)))
        if index % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def measure(count: int, bucketed: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder)).start()
        try:
            client = server.client()
            before = int(client.info("memory")["used_memory"])
            fill(client, count, bucketed)
            after = int(client.info("memory")["used_memory"])
            return (after - before) / count
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    for bucketed in (True, False):
        per = measure(args.messages, bucketed)
        layout = "bucketed (as the producer stores it)" if bucketed else "one hash per account"
        print(f"{args.messages:,} messages, {layout}: {per:.1f} bytes/message, {per * args.messages / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
