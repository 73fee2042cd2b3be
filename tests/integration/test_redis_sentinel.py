"""Sentinel: a real master, replica and three Sentinels on loopback (REDIS_SENTINELS).

The failover test SIGKILLs the master while mail arrives in Dovecot and a producer and two
workers run: they find the promoted replica through the Sentinels without a restart, and
the end state is counted from outside (messages never handled, handled twice, entries the
failover rolled back). The producer re-reads its position from Redis after a failure, so
entries a failover rolls back are fetched and emitted again: they come back as
duplicates rather than losses. REDIS_WAIT_REPLICAS=1 keeps acknowledged positions on the
replica, so nothing acknowledged is rolled back at all.
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

from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import RedisSettings
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sentinel import SentinelTopology
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


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_sigkill_the_master_while_mail_arrives(topology, sentinel_env, mailbox, wait_replicas):
    """SIGKILL the master mid-stream: producer and two workers carry on against the
    promoted replica without a restart; every message is handled (0 lost with
    REDIS_WAIT_REPLICAS=1; without it, at most what was written in the last second)."""
    total = 150
    env = {**sentinel_env, "REDIS_WAIT_REPLICAS": str(wait_replicas)}
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in (producer_cmd(), worker_cmd("w1"), worker_cmd("w2"))]
    try:
        watch = Watch(topology.master.client())
        feeder = threading.Thread(target=feed, args=(mailbox.name, mailbox.server, total, 0.03))
        feeder.start()
        threading.Thread(target=watch.run, daemon=True).start()
        assert wait_until(lambda: watch.samples and watch.samples[-1][1] >= total // 3, 60), "no mail flowed"
        watch.stop.set()
        acknowledged_before_kill = watch.samples[-1][1]
        topology.kill_master()
        killed_at = time.monotonic()
        topology.wait_failover()
        failover_s = time.monotonic() - killed_at
        # The old master comes back empty; the Sentinels make it a replica of the new one,
        # which gives WAIT its replica again.
        topology.master.start()
        feeder.join(60)
        everything = set(range(1, total + 1))
        wait_until(lambda: everything <= set(handled(env)), 120, 0.2)
        assert all(p.poll() is None for p in procs), "a process died instead of reconnecting"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=30)[1] for proc in procs]
    counts = handled(env)
    lost = everything - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    new_master = topology.replica.client()
    print(f"\nfailover REDIS_WAIT_REPLICAS={wait_replicas}: {total} messages, master killed at "
          f"{acknowledged_before_kill} entries, promoted after {failover_s:.1f}s; lost={len(lost)} "
          f"duplicates={duplicates} written in the last second before the kill="
          f"{watch.written_in_last_second()} stream on the new master={new_master.xlen(STREAM)}")
    assert all(proc.returncode == 0 for proc in procs), [e[-1500:] for e in errors]
    if wait_replicas:
        assert not lost
    else:
        assert len(lost) <= watch.written_in_last_second()
    assert new_master.xpending(STREAM, GROUP)["pending"] == 0
    assert os.environ.get("REDIS_SENTINELS") is None
