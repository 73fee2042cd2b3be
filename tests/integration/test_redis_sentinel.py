"""Sentinel: a real master, replica and three Sentinels on loopback (REDIS_SENTINELS).

The failover test SIGKILLs the master while mail arrives in Dovecot and a producer and two
workers run: they find the promoted replica through the Sentinels without a restart, and
the end state is counted from outside (messages never handled, messages handled twice).
It runs with the replica in sync, and with its replication link frozen for the last
second (a TCP proxy), which is when asynchronous replication rolls writes back. The
producer re-reads its position from Redis after a failure, so rolled-back entries are
fetched and emitted again: they come back as duplicates rather than losses. With
REDIS_WAIT_REPLICAS=1 the producer and workers do not move on past a write the replica
lacks, so at most the batch in flight is handled twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import RedisSettings
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sentinel import SentinelTopology, TopologyTls
from email_ingestion.sandbox.tls_ca import ThrowawayCA
from tests.conftest import ROOT, imap_admin, producer_cmd
from tests.support.waits import wait_until

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    sandbox = SentinelTopology(tmp_path / "sentinel").start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def sentinel_env(topology: SentinelTopology, producer_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return env_for(topology, producer_env, tmp_path)


def env_for(topology: SentinelTopology, producer_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    records = tmp_path / "records"
    records.mkdir()
    env = {k: v for k, v in producer_env.items() if k != "REDIS_URL"}
    env.update(REDIS_SENTINELS=topology.sentinel_setting, REDIS_SENTINEL_MASTER="mymaster",
               TEST_RECORD_DIR=str(records), WORKER_BLOCK_TIMEOUT_MS="500", WORKER_METRICS_PORT="0",
               POLL_INTERVAL_SECONDS="5")
    return env


def worker_cmd(name: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler", "tests.support.ha_handlers:flaky",
            *extra]


def handled(env: dict[str, str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for path in Path(env["TEST_RECORD_DIR"]).glob("*.txt"):
        counts.update(int(line) for line in path.read_text().split())
    return counts


def test_pipeline_and_tools_find_the_master_through_sentinel(topology, sentinel_env, mailbox, tmp_path):
    """producer --once, worker --burst, the DLQ tool and the backup script all reach the
    master through the Sentinels, with no REDIS_URL at all."""
    mailbox.append(*[sample_message(i) for i in range(10)])
    env = {**sentinel_env, "TEST_DEAD_EVERY": "4"}
    for cmd in (producer_cmd("--once"), worker_cmd("w1", "--burst")):
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
    master = topology.master.client()
    assert master.xlen(STREAM) == 10 and master.xpending(STREAM, GROUP)["pending"] == 0
    assert set(handled(env)) == {uid for uid in range(1, 11) if uid % 4}
    dlq = subprocess.run([sys.executable, "-m", "email_ingestion.worker.dlq_admin", "--json", "stats"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dlq.returncode == 0 and json.loads(dlq.stdout)["depth"] == 2, dlq.stderr[-2000:]
    backups = tmp_path / "backups"
    backup = subprocess.run([sys.executable, "scripts/backup.py", "--output-dir", str(backups)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert backup.returncode == 0, backup.stderr[-2000:]
    assert len(list(backups.glob("*.rdb"))) == 1


def test_sentinels_and_servers_over_tls(tmp_path, producer_env, mailbox):
    """TLS-only Sentinels, TLS replication, and a producer and a worker that reach both
    over TLS (REDIS_TLS=true, REDIS_CA_FILE, client certificate) through REDIS_SENTINELS."""
    ca = ThrowawayCA(tmp_path / "ca")
    cert = ca.issue("node")
    sandbox = SentinelTopology(tmp_path / "sentinel-tls", tls=TopologyTls(ca, cert)).start()
    try:
        env = {**env_for(sandbox, producer_env, tmp_path), "REDIS_TLS": "true", "REDIS_CA_FILE": str(ca.cert_file),
               "REDIS_CERT_FILE": str(cert.cert_file), "REDIS_KEY_FILE": str(cert.key_file),
               "REDIS_WAIT_REPLICAS": "1"}
        mailbox.append(*[sample_message(i) for i in range(5)])
        for cmd in (producer_cmd("--once"), worker_cmd("w1", "--burst")):
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr[-2000:]
        assert set(handled(env)) == set(range(1, 6))
        assert sandbox.replica.client().xlen(STREAM) == 5  # replicated over TLS, WAITed for
        with pytest.raises(redis.ConnectionError):  # the Sentinels speak TLS only
            redis.Redis(port=sandbox.sentinels[0].port, socket_timeout=2).ping()
    finally:
        sandbox.stop()


def test_wait_replicas_waits_on_the_writing_connection(topology):
    """Replication.wait returns once the replica holds the writes made before it, and
    raises (retryable) when fewer replicas than asked for answer."""
    from email_ingestion.common.errors import RedisUnavailableError
    from email_ingestion.common.redis_client import Replication
    client = make_redis(RedisSettings(sentinels=topology.sentinel_setting))
    client.xadd(STREAM, {"payload": "x"})
    Replication(1, 2000).wait(client, STREAM)
    assert topology.replica.client().xlen(STREAM) == 1
    with pytest.raises(RedisUnavailableError, match="only 1 of 2 replicas"):
        Replication(2, 200).wait(client, STREAM)


def test_wait_covers_writes_made_on_another_connection(lagging_topology):
    """The write was made on one pooled connection and WAIT runs on another (as when a
    health request borrows the connection in between): with the replica's link frozen,
    the wait must not report the write replicated. A bare WAIT on a connection that wrote
    nothing would answer 1 at once."""
    from email_ingestion.common.errors import RedisUnavailableError
    from email_ingestion.common.redis_client import Replication
    writer = make_redis(RedisSettings(sentinels=lagging_topology.sentinel_setting))
    other = make_redis(RedisSettings(sentinels=lagging_topology.sentinel_setting))
    writer.xadd(STREAM, {"payload": "before"})
    Replication(1, 2000).wait(other, STREAM)  # the link works: returns
    lagging_topology.freeze_replication()
    writer.xadd(STREAM, {"payload": "after"})
    assert other.execute_command("WAIT", 1, 100) == 1  # what a bare WAIT would have said
    with pytest.raises(RedisUnavailableError, match="only 0 of 1 replicas"):
        Replication(1, 300).wait(other, STREAM)


@dataclass
class Watch:
    """Samples the master's stream length every 50 ms until the kill."""

    client: Any
    samples: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), int(self.client.xlen(STREAM))))
            except Exception:  # noqa: BLE001 - the master is being killed
                return
            time.sleep(0.05)

    @property
    def length(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def written_in_last_second(self) -> int:
        end_t, end_n = self.samples[-1]
        before = [n for t, n in self.samples if t <= end_t - 1.0]
        return end_n - (before[-1] if before else 0)


def feed(mailbox_name: str, server: Any, total: int, interval_s: float) -> None:
    client = imap_admin(server)
    try:
        for index in range(total):
            client.append(mailbox_name, sample_message(index))
            time.sleep(interval_s)
    finally:
        client.logout()


@pytest.fixture
def lagging_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    sandbox = SentinelTopology(tmp_path / "sentinel", replica_via_proxy=True).start()
    yield sandbox
    sandbox.stop()


@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.parametrize("lagging", [False, True], ids=["in-sync", "replica-lagging-1s"])
@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_sigkill_the_master_while_mail_arrives(request, producer_env, tmp_path, mailbox, wait_replicas, lagging):
    """SIGKILL the master mid-stream (in sync, or after its replica has missed a second of
    writes): producer and two workers carry on against the promoted replica without a
    restart; every message is handled, nothing stays pending: 0 lost with
    REDIS_WAIT_REPLICAS=1; without it, at most what was written in the last second."""
    topology = request.getfixturevalue("lagging_topology" if lagging else "topology")
    env = {**env_for(topology, producer_env, tmp_path), "REDIS_WAIT_REPLICAS": str(wait_replicas)}
    total = 150
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in (producer_cmd(), worker_cmd("w1"), worker_cmd("w2"))]
    try:
        watch = Watch(topology.master.client())
        feeder = threading.Thread(target=feed, args=(mailbox.name, mailbox.server, total, 0.03))
        feeder.start()
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        assert wait_until(lambda: watch.length >= total // 3, 60), "no mail flowed"
        if lagging:
            topology.freeze_replication()
            time.sleep(1.0)
        watch.stop.set()
        watcher.join(30)
        # The last sample is taken here, just before the kill, not left to the watcher: a
        # descheduled watcher's last sample could be a second old, and what was written
        # after it (and lost) would not count in "written in the last second".
        watch.samples.append((time.monotonic(), int(topology.master.client().xlen(STREAM))))
        at_kill = watch.length
        topology.kill_master()
        killed_at = time.monotonic()
        topology.wait_failover()
        failover_s = time.monotonic() - killed_at
        topology.restart_old_master()
        feeder.join(60)
        everything = set(range(1, total + 1))
        wait_until(lambda: everything <= set(handled(env)), 120, 0.2)
        new_master = topology.replica.client()
        # XACKs the lagging replica missed leave entries in their (live) consumer's PEL on the
        # new master; the worker re-reads its own entries once idle past CLAIM_MIN_IDLE_MS
        # (default 60 s), so they drain while the workers run, not after they stop.
        drained = wait_until(lambda: new_master.xpending(STREAM, GROUP)["pending"] == 0, 60 + 30)
        assert all(p.poll() is None for p in procs), "a process died instead of reconnecting"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=30)[1] for proc in procs]
    counts = handled(env)
    lost = everything - set(counts)
    print(f"\nfailover WAIT_REPLICAS={wait_replicas} {'lagging' if lagging else 'in-sync'}: {total} messages, "
          f"killed at {at_kill} entries, promoted in {failover_s:.1f}s: lost={len(lost)} "
          f"handled twice={sum(n - 1 for n in counts.values())} "
          f"written in the last second={watch.written_in_last_second()}")
    assert all(proc.returncode == 0 for proc in procs), [e[-1500:] for e in errors]
    assert not lost if wait_replicas else len(lost) <= watch.written_in_last_second()
    assert drained, new_master.xpending(STREAM, GROUP)
    assert os.environ.get("REDIS_SENTINELS") is None
