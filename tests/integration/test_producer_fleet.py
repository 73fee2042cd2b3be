"""Producer failover with real processes: two producers share twenty Dovecot mailboxes
through leases in a real redis-server, with mail arriving; one is SIGKILLed, or SIGSTOPped
past its lease and woken. Counted from outside: every message in the stream once, and for
each mailbox the fencing tokens of its entries never go down along the stream (a woken
producer's stale write would break that)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import MailboxKeys
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import USER, imap_admin, producer_cmd
from tests.conftest import stream_payloads as stream_payloads_of
from tests.support.waits import wait_until

STREAM = "email_ingestion_stream"
MAILBOXES = 20
LEASE_MS = 3000


@pytest.fixture
def folders(dovecot) -> list[str]:
    prefix = f"f-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-{i:02d}" for i in range(MAILBOXES)]
    client = imap_admin(dovecot)
    for name in names:
        client.create_folder(name)
    client.logout()
    return names


@pytest.fixture
def fleet_file(tmp_path: Path, folders: list[str]) -> Path:
    path = tmp_path / "mailboxes.toml"
    path.write_text("".join(f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{name}"\nmax_connections = {MAILBOXES}\n\n'
                            for name in folders), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _clean(redis_client):
    redis_client.flushdb()


class Producer:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path, producer_id: str | None = None) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.port = free_port()
        self.proc = subprocess.Popen(producer_cmd(), env={**env, "PRODUCER_ID": producer_id or name,
                                                          "PRODUCER_METRICS_PORT": str(self.port)},
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))

    def following(self) -> int:
        """How many mailboxes this process follows now, by its /status (0 while it is not up)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=30) as answer:
                body = json.load(answer)
        except OSError:
            return 0
        return sum(1 for m in body["mailboxes"] if m["state"] == "following")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def fleet_env(producer_env: dict[str, str], fleet_file: Path, imap_port: int, lease_ms: int | None) -> dict[str, str]:
    env = {**producer_env, "MAILBOXES_FILE": str(fleet_file), "IMAP_PORT": str(imap_port),
           "POLL_INTERVAL_SECONDS": "5", "BATCH_SIZE": "10"}
    if lease_ms is not None:
        env["PRODUCER_LEASE_MS"] = str(lease_ms)
    return env


def holders(client: Any, folders: list[str]) -> dict[str, str]:
    """folder -> lease value, for the folders that have an owner now."""
    values = client.mget([MailboxKeys(STREAM, USER, name).lease for name in folders])
    return {name: value.decode() for name, value in zip(folders, values, strict=True) if value}


def owner_counts(client: Any, folders: list[str]) -> Counter[str]:
    return Counter(value.rsplit(":", 1)[0] for value in holders(client, folders).values())


def entries(client: Any) -> list[tuple[int, str, int, str]]:
    """(entry ms, mailbox, uid, writer's lease value) of every stream entry, in stream order."""
    found = []
    for entry_id, fields in client.xrange(STREAM):
        payload = json.loads(fields[b"payload"])
        found.append((int(entry_id.split(b"-")[0]), payload["mailbox"], payload["uid"], fields[b"producer"].decode()))
    return found


def assert_exactly_once_and_fenced(client: Any, expected: dict[str, int]) -> list[tuple[int, str, int, str]]:
    found = entries(client)
    counts = Counter((mailbox, uid) for _, mailbox, uid, _ in found)
    repeated = {k: n for k, n in counts.items() if n > 1}
    per_mailbox = Counter(mailbox for mailbox, _ in counts)
    assert not repeated, f"repeated: {repeated}"
    assert dict(per_mailbox) == {k: v for k, v in expected.items() if v}, "lost messages"
    tokens: dict[str, list[int]] = defaultdict(list)
    for _, mailbox, _, writer in found:
        tokens[mailbox].append(int(writer.rsplit(":", 1)[1]))
    for mailbox, seq in tokens.items():
        assert seq == sorted(seq), f"{mailbox}: an entry written under an older lease after a newer one: {seq}"
    return found


def feed(server: Any, plan: list[str], interval_s: float, expected: Counter[str]) -> threading.Thread:
    """Append one message per name in `plan`, `interval_s` apart, counting into `expected`."""
    def run() -> None:
        client = imap_admin(server)
        try:
            for index, name in enumerate(plan):
                client.append(name, sample_message(10_000 + index))
                expected[name] += 1
                time.sleep(interval_s)
        finally:
            client.logout()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def start_balanced(env: dict[str, str], tmp_path: Path, client: Any, folders: list[str]) -> list[Producer]:
    producers = [Producer(name, env, tmp_path) for name in ("p1", "p2")]
    balanced = wait_until(lambda: sorted(owner_counts(client, folders).values()) == [MAILBOXES // 2] * 2, 60)
    assert balanced, (owner_counts(client, folders), producers[0].log_text()[-2000:])
    return producers


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("lease_ms", [LEASE_MS, None], ids=["lease-3s", "default-lease"])
def test_a_killed_producers_mailboxes_move_to_the_survivor(producer_env, fleet_file, folders, dovecot,
                                                           redis_client, tmp_path, lease_ms):
    """SIGKILL one of two producers with mail arriving: the other takes all twenty mailboxes
    over (the time it took, in lease times, is printed) and every message is in the stream
    exactly once."""
    env = fleet_env(producer_env, fleet_file, dovecot.port, lease_ms)
    p1, p2 = start_balanced(env, tmp_path, redis_client, folders)
    expected: Counter[str] = Counter()
    try:
        feeder = feed(dovecot, folders * 5, 0.03, expected)
        time.sleep(1.0)
        p1.proc.kill()
        killed_at = time.monotonic()
        moved = wait_until(lambda: owner_counts(redis_client, folders) == Counter({"p2": MAILBOXES}), 120)
        moved_s = time.monotonic() - killed_at
        feeder.join(60)
        assert moved, owner_counts(redis_client, folders)
        total = sum(expected.values())
        assert wait_until(lambda: redis_client.xlen(STREAM) >= total, 60), (redis_client.xlen(STREAM), total)
        time.sleep(1.0)  # anything doubled would land now
        assert_exactly_once_and_fenced(redis_client, dict(expected))
    finally:
        assert p2.stop() == 0, p2.log_text()[-2000:]
        p1.stop()
    lease_s = (lease_ms or 30_000) / 1000
    # How fast is measured and shown, not asserted: the survivor's takeover is lease expiry
    # plus its own loop, which on a loaded machine can take longer than a second lease time
    # (a timed assertion failed there for speed alone). That it happens at all is asserted.
    print(f"\nSIGKILL with a {lease_s:g} s lease: {MAILBOXES // 2} mailboxes moved in {moved_s:.1f} s "
          f"({moved_s / lease_s:.1f} lease times), {total} messages once each")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_producer_frozen_past_its_lease_appends_nothing_when_it_wakes(producer_env, fleet_file, folders,
                                                                       dovecot, redis_client, tmp_path):
    """SIGSTOP a producer in the middle of a long sync, past its lease; the other takes its
    mailboxes over; SIGCONT: the woken one's next write is refused (fenced), it gives the
    mailboxes up, and every message is in the stream once, in token order per mailbox."""
    link = TcpProxy(dovecot.port, delay_s=0.02).start()  # a slower link, so the sync is still going
    env = fleet_env(producer_env, fleet_file, link.port, LEASE_MS)
    p1, p2 = start_balanced(env, tmp_path, redis_client, folders)
    expected: Counter[str] = Counter()
    try:
        big = next(name for name, value in holders(redis_client, folders).items() if value.startswith("p1:"))
        before_stop = set(v for v in holders(redis_client, folders).values() if v.startswith("p1:"))
        client = imap_admin(dovecot)
        client.multiappend(big, [sample_message(i) for i in range(400)])
        client.logout()
        expected[big] += 400
        assert wait_until(lambda: sum(1 for e in entries(redis_client) if e[1] == big) >= 40, 60)
        p1.proc.send_signal(signal.SIGSTOP)
        feeder = feed(dovecot, folders * 2, 0.05, expected)
        assert wait_until(lambda: owner_counts(redis_client, folders) == Counter({"p2": MAILBOXES}), 60)
        time.sleep(LEASE_MS / 1000)
        woken_at_ms = int(redis_client.time()[0] * 1000)
        p1.proc.send_signal(signal.SIGCONT)
        feeder.join(60)
        total = sum(expected.values())
        assert wait_until(lambda: redis_client.xlen(STREAM) >= total, 120), (redis_client.xlen(STREAM), total)
        time.sleep(1.0)
        found = assert_exactly_once_and_fenced(redis_client, dict(expected))
        stale = [e for e in found if e[3] in before_stop and e[0] >= woken_at_ms]
        assert not stale, f"{len(stale)} entries written under p1's old leases after it woke"
        assert not before_stop & set(holders(redis_client, folders).values()), "p1 kept an old lease"
        assert p1.proc.poll() is None, "the woken producer died instead of carrying on"
    finally:
        results = [p.stop() for p in (p1, p2)]
        link.stop()
    log = p1.log_text()
    assert "lease lost" in log or "no longer ours" in log, log[-3000:]
    assert results == [0, 0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_hand_run_once_next_to_the_service_with_the_same_id_does_not_flap(producer_env, mailbox, redis_client,
                                                                          tmp_path):
    """`producer.py --once` run by hand beside the running service (same PRODUCER_ID, the host
    name): the pass completes, the service follows the mailbox again once --once has given it
    back, and nothing is doubled."""
    # The poll as a safety net within the waits below: this test is about the lease, and a
    # message appended in the instant between a pass's last EXAMINE and IDLE can wait for
    # the poll (the unsolicited-EXISTS race of issue 18 §18, not this test's subject).
    env = {**producer_env, "PRODUCER_LEASE_MS": str(LEASE_MS), "PRODUCER_ID": "same-host",
           "POLL_INTERVAL_SECONDS": "5"}
    keys = MailboxKeys(STREAM, USER, mailbox.name)
    service = Producer("same-host", env, tmp_path)
    try:
        mailbox.append(sample_message(1), sample_message(2))
        assert wait_until(lambda: redis_client.xlen(STREAM) == 2, 30)
        first = redis_client.get(keys.lease)
        mailbox.append(sample_message(3))
        done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert wait_until(lambda: (redis_client.get(keys.lease) or first) != first, 30)
        mailbox.append(sample_message(4))
        assert wait_until(lambda: redis_client.xlen(STREAM) == 4, 30), redis_client.xlen(STREAM)
        time.sleep(LEASE_MS / 1000)
        assert service.proc.poll() is None
        uids = sorted(uid for _, _, uid, _ in entries(redis_client))
        assert uids == [1, 2, 3, 4]
    finally:
        assert service.stop() == 0
    log = service.log_text()
    # The service noticed (the error line itself needs --once to still hold the lease then).
    assert "another process runs with this PRODUCER_ID" in log or "lease lost" in log, log[-3000:]


def refused_writes(*producers: Producer) -> list[str]:
    """Log lines of writes refused by the fence, or leases found lost: an unclean hand-over."""
    return [line for p in producers for line in p.log_text().splitlines()
            if "no longer ours" in line or "lease lost" in line]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("lease_ms", "same_id"), [(LEASE_MS, False), (None, False), (LEASE_MS, True)],
                         ids=["lease-3s", "default-lease", "one-host-no-producer-id"])
def test_producers_joining_and_leaving_share_the_mailboxes_and_hand_over_cleanly(
        producer_env, fleet_file, folders, dovecot, redis_client, tmp_path, lease_ms, same_id):
    """A second producer joins one that follows all twenty mailboxes in the middle of their
    first sync: each then follows ten; it leaves (SIGTERM): the first follows twenty again.
    Mail keeps arriving; every message is in the stream once, and no write was refused (the
    giver finished its write in hand before it released the lease)."""
    client = imap_admin(dovecot)
    for name in folders:
        client.multiappend(name, [sample_message(i) for i in range(20)])
    client.logout()
    expected: Counter[str] = Counter({name: 20 for name in folders})
    link = TcpProxy(dovecot.port, delay_s=0.01).start()  # a slower link: the first sync is still going
    env = {**fleet_env(producer_env, fleet_file, link.port, lease_ms), "BATCH_SIZE": "5"}
    lease_s = (lease_ms or 30_000) / 1000
    p1 = Producer("p1", env, tmp_path, "same-host" if same_id else None)
    p2: Producer | None = None
    try:
        assert wait_until(lambda: p1.following() == MAILBOXES and redis_client.xlen(STREAM) >= 40, 120)
        feeder = feed(dovecot, folders * 3, 0.05, expected)
        p2 = Producer("p2", env, tmp_path, "same-host" if same_id else None)
        joined_at = time.monotonic()
        assert wait_until(lambda: (p1.following(), p2.following()) == (10, 10), 4 * lease_s + 60), (
            p1.following(), p2.following(), p1.log_text()[-3000:])
        spread_s = time.monotonic() - joined_at
        assert p2.stop() == 0, p2.log_text()[-3000:]
        left_at = time.monotonic()
        assert wait_until(lambda: p1.following() == MAILBOXES, 4 * lease_s + 60), p1.following()
        taken_s = time.monotonic() - left_at
        feeder.join(60)
        total = sum(expected.values())
        assert wait_until(lambda: redis_client.xlen(STREAM) >= total, 120), (redis_client.xlen(STREAM), total)
        time.sleep(1.0)  # anything doubled would land now
        assert_exactly_once_and_fenced(redis_client, dict(expected))
        assert not refused_writes(p1, p2), refused_writes(p1, p2)
    finally:
        results = [p.stop() for p in (p1, p2) if p is not None]
        link.stop()
    assert results[0] == 0, p1.log_text()[-3000:]
    print(f"\n{lease_s:g} s lease: 10 mailboxes handed to a joining producer in {spread_s:.1f} s, "
          f"taken back from a leaving one in {taken_s:.1f} s; {total} messages once each")
    if lease_ms is None:  # the promise, at the default timings: within two lease periods
        assert spread_s <= 2 * lease_s and taken_s <= 2 * lease_s


def two_folders(server: Any, tmp_path: Path) -> tuple[list[str], Path]:
    names = [f"h-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    client = imap_admin(server)
    for name in names:
        client.create_folder(name)
    client.logout()
    path = tmp_path / "two.toml"
    path.write_text("".join(f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{name}"\n\n' for name in names), encoding="utf-8")
    return names, path


def lease_tokens(client: Any, names: list[str]) -> list[int]:
    return [int(client.get(MailboxKeys(STREAM, USER, name).lease_token) or 0) for name in names]


def rounds_seen(client: Any, count: int, timeout_s: float) -> bool:
    """True once every registered producer has run `count` more ownership rounds (each one
    moves its registration's expiry)."""
    key = next(iter(client.scan_iter("email_ingestion:producers:*")))
    seen: dict[bytes, list[float]] = defaultdict(list)

    def enough() -> bool:
        members = client.zrange(key, 0, -1, withscores=True)
        for member, score in members:
            if not seen[member] or seen[member][-1] != score:
                seen[member].append(score)
        return bool(members) and all(len(seen[member]) > count for member, _ in members)
    return wait_until(enough, timeout_s, interval_s=0.05)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("trouble", ["password-refused", "imap-unreachable"])
def test_a_producer_that_cannot_serve_its_mailboxes_lets_a_healthy_one_take_them(producer_env, dovecot,
                                                                                redis_client, tmp_path, trouble):
    """Host A cannot serve the mailboxes (its own stale password, or no route to the IMAP
    server) and holds both leases; healthy host B joins: A gives them back, B delivers the
    mail, and A, still running, stays away (no flapping)."""
    names, path = two_folders(dovecot, tmp_path)
    env = fleet_env(producer_env, path, dovecot.port, LEASE_MS)
    broken = {"IMAP_PASSWORD": "stale-password"} if trouble == "password-refused" else {"IMAP_PORT": str(free_port())}
    a = Producer("a", {**env, **broken}, tmp_path)
    b: Producer | None = None
    try:
        assert wait_until(lambda: owner_counts(redis_client, names) == Counter({"a": 2}), 60)
        client = imap_admin(dovecot)
        for name in names:
            client.append(name, sample_message(1))
        client.logout()
        b = Producer("b", env, tmp_path)
        assert wait_until(lambda: redis_client.xlen(STREAM) == 2, 120), (redis_client.xlen(STREAM), a.log_text()[-3000:])
        assert owner_counts(redis_client, names) == Counter({"b": 2})
        tokens = lease_tokens(redis_client, names)
        assert rounds_seen(redis_client, 6, 60)  # two lease periods
        assert lease_tokens(redis_client, names) == tokens and owner_counts(redis_client, names) == Counter({"b": 2})
        assert a.proc.poll() is None, "the failing producer must carry on (its other mailboxes may be fine)"
    finally:
        results = [p.stop() for p in (a, b) if p is not None]
    assert results == [0, 0], a.log_text()[-3000:]
    assert sorted(p["uid"] for p in stream_payloads_of(redis_client)) == [1, 1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_when_every_producer_fails_a_mailbox_it_does_not_go_round(producer_env, dovecot, redis_client, tmp_path):
    """Both hosts have a stale password: the mailboxes move at most once (A gives up while B
    may try; B, failing too, keeps them), then stay put for two lease periods and more."""
    names, path = two_folders(dovecot, tmp_path)
    env = {**fleet_env(producer_env, path, dovecot.port, LEASE_MS), "IMAP_PASSWORD": "stale-password"}
    a = Producer("a", env, tmp_path)
    b: Producer | None = None
    try:
        assert wait_until(lambda: owner_counts(redis_client, names) == Counter({"a": 2}), 60)
        b = Producer("b", env, tmp_path)
        assert wait_until(lambda: owner_counts(redis_client, names) == Counter({"b": 2}), 60)
        tokens = lease_tokens(redis_client, names)
        assert rounds_seen(redis_client, 9, 90)  # three lease periods
        assert lease_tokens(redis_client, names) == tokens, "the leases went round"
        assert owner_counts(redis_client, names) == Counter({"b": 2})
    finally:
        results = [p.stop() for p in (a, b) if p is not None]
    assert results == [0, 0]
