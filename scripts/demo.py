#!/usr/bin/env python3
"""The demo behind `make demo`: producer + two workers, end to end, then a clean stop.

With no mailbox configured (no IMAP_USER in the environment or .env) it starts a local
Dovecot seeded with sample mail (including deliberately broken messages) and a local
redis-server, both on free loopback ports in .demo/. With a mailbox configured it uses
that mailbox and REDIS_URL (or a local redis-server when none is set).

It runs `python producer.py` and two `python worker.py` processes, delivers a few new
messages while they run (to show IDLE), prints what flowed through, then stops every
process with SIGTERM and checks they exited 0. Logs are in .demo/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dotenv import dotenv_values  # noqa: E402

from email_ingestion.sandbox.dovecot import DovecotServer  # noqa: E402
from email_ingestion.sandbox.redis_server import RedisServer  # noqa: E402
from email_ingestion.sandbox.sample_mail import BROKEN_MESSAGES, sample_message  # noqa: E402

DEMO_DIR = ROOT / ".demo"
USER, PASSWORD = "demo@example.com", "demo-password"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def configured() -> dict[str, str]:
    values = {**{k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None}, **os.environ}
    return values if values.get("IMAP_USER") else {}


def start_local_imap() -> tuple[DovecotServer, dict[str, str]]:
    server = DovecotServer(DEMO_DIR / "dovecot", users={USER: PASSWORD}).start()
    messages = [sample_message(i, seed=7) for i in range(200)] + [raw for _, raw in BROKEN_MESSAGES]
    server.seed_maildir(USER, messages)
    say(f"local Dovecot on 127.0.0.1:{server.port} (IMAPS {server.ssl_port}), "
        f"{len(messages)} sample messages ({len(BROKEN_MESSAGES)} deliberately broken)")
    env = {"IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(server.ssl_port), "IMAP_SSL": "true",
           "IMAP_CA_FILE": str(server.cert_file), "IMAP_USER": USER, "IMAP_AUTH_METHOD": "password",
           "IMAP_PASSWORD": PASSWORD, "IMAP_MAILBOX": "INBOX"}
    return server, env


def append_live(server: DovecotServer, count: int) -> None:
    from imapclient import IMAPClient
    client = IMAPClient("127.0.0.1", server.port, ssl=False)
    client.login(USER, PASSWORD)
    for index in range(count):
        client.append("INBOX", sample_message(10_000 + index, subject=f"Arrived while idling #{index}"))
    client.logout()


def spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(DEMO_DIR / "logs" / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def summary(client, stream: str, jsonl: Path) -> None:
    group = next(iter(client.xinfo_groups(stream)), {})
    lines = jsonl.read_text().splitlines() if jsonl.exists() else []
    payloads = [json.loads(line) for line in lines]
    with_defects = sum(1 for p in payloads if p["parse_defects"])
    attachments = sum(len(p["attachments"]) for p in payloads)
    dlq = sum(int(client.xlen(k)) for k in client.scan_iter(match="email_ingestion_dlq*"))
    say(f"stream {stream}: {client.xlen(stream)} entries; group {group.get('name', b'-').decode()}: "
        f"pending {group.get('pending')}, lag {group.get('lag')}; DLQ {dlq}")
    say(f"JSONL handler wrote {len(payloads)} emails ({with_defects} with parse defects listed, "
        f"{attachments} attachments described) to {jsonl.relative_to(ROOT)}")
    for payload in payloads[-3:]:
        sender = (payload.get("from") or {}).get("address")
        say(f"  uid {payload['uid']:>4}  from {sender}  subject {payload['subject']!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long to run against a real mailbox")
    args = parser.parse_args()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    (DEMO_DIR / "logs").mkdir(parents=True)
    real = configured()
    servers: list = []
    env = {**os.environ, "LOG_FORMAT": "json", "PRODUCER_METRICS_PORT": "0", "WORKER_METRICS_PORT": "0",
           "POLL_INTERVAL_SECONDS": "30"}
    if real:
        say(f"using the configured mailbox {real['IMAP_USER']} ({real.get('IMAP_HOST', 'imap.gmail.com')})")
        env.update(real)
    else:
        dovecot, imap_env = start_local_imap()
        servers.append(dovecot)
        env.update(imap_env)
    if not env.get("REDIS_URL"):
        redis_server = RedisServer(DEMO_DIR / "redis").start()
        servers.append(redis_server)
        env["REDIS_URL"] = redis_server.url
        say(f"local redis-server on {redis_server.url}")
    import redis
    client = redis.Redis.from_url(env["REDIS_URL"])
    stream = env.get("REDIS_STREAM_NAME", "email_ingestion_stream")
    jsonl = DEMO_DIR / "emails.jsonl"
    procs = {
        "producer": spawn("producer", ["producer.py"], env),
        "worker-1": spawn("worker-1", ["worker.py", "--consumer", "demo-1", "--handler", f"jsonl:{jsonl}"], env),
        "worker-2": spawn("worker-2", ["worker.py", "--consumer", "demo-2", "--handler", f"jsonl:{jsonl}"], env),
    }
    say("started producer.py and two worker.py (--consumer demo-1, demo-2)")
    try:
        if real:
            time.sleep(args.seconds)
        else:
            expected = 200 + len(BROKEN_MESSAGES)
            ok = wait_for(lambda: jsonl.exists() and len(jsonl.read_text().splitlines()) >= expected, 60)
            say(f"first sync {'done' if ok else 'NOT done'}: {expected} messages ingested and handled")
            append_live(servers[0], 3)
            started = time.monotonic()
            ok = wait_for(lambda: len(jsonl.read_text().splitlines()) >= expected + 3, 20)
            say(f"3 messages appended while the producer idled: handled {time.monotonic() - started:.1f} s later"
                if ok else "appended messages did NOT arrive")
        summary(client, stream, jsonl)
    finally:
        codes = stop_all(procs)
        for server in servers:
            server.stop()
    clean = all(code == 0 for code in codes.values())
    say(f"stopped with SIGTERM: exit codes {codes} ({'clean' if clean else 'NOT clean: see .demo/logs'})")
    return 0 if clean else 1


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int | None]:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = proc.wait()
    return codes


if __name__ == "__main__":
    sys.exit(main())
