"""Issue 19 items 10 and 11: a Redis that refuses for a while (MISCONF, NOREPLICAS, BUSY,
OOM, a restart) is waited out by a real worker process, on every path (the loop, the lease
keeper's renewals, the settlement), nothing handled is handled again, and the worker
resumes as soon as Redis serves again rather than sitting out its circuit breaker."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.cluster import RedisClusterSandbox
from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until
from tests.support.worker_env import fast_worker_env

pytestmark = pytest.mark.slow

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys.of(STREAM, GROUP, "email_ingestion_dlq")


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own whose background saves fail: its dbfilename names
    a directory (MISCONF once a BGSAVE is asked for)."""
    root = tmp_path / "own-redis"
    # MISCONF needs a save point: Redis refuses writes after a failed save only when it saves.
    server = RedisServer(root, extra_args=("--dbfilename", "blocked.rdb", "--save", "3600 1"))
    server.start()
    (root / "blocked.rdb").mkdir()  # after the start, which would try to load it
    yield server
    server.client().config_set("save", "")  # else the shutdown's save fails and it refuses to stop
    server.stop()


@pytest.fixture
def env(own_redis, tmp_path) -> dict[str, str]:
    records, markers = tmp_path / "records", tmp_path / "markers"
    records.mkdir()
    markers.mkdir()
    return {**fast_worker_env(own_redis.url, records), "TEST_MARKER_DIR": str(markers),
            "TEST_REDIS_PORT": str(own_redis.port)}


def recorded(env: dict[str, str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in Path(env["TEST_RECORD_DIR"]).glob("*.txt"):
        counts.update(path.read_text().split())
    return counts


def start_worker(env: dict[str, str], handler: str, log_path: Path, *extra: str) -> subprocess.Popen[str]:
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "w", "--handler", handler,
                                 "--burst", *extra], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=log_file, text=True)


CLEAR = {
    "misconf": lambda client: client.config_set("stop-writes-on-bgsave-error", "no"),
    "noreplicas": lambda client: client.config_set("min-replicas-to-write", 0),
    "busy": lambda client: client.script_kill(),
}


@pytest.mark.parametrize("fault", ["misconf", "noreplicas", "busy"])
def test_refusing_redis_is_waited_out_and_nothing_is_handled_twice(env, own_redis, tmp_path, fault):
    """Redis starts refusing (MISCONF after a failed save, NOREPLICAS under
    min-replicas-to-write, BUSY under a long script) in the middle of a batch of slow
    handler calls, so the lease keeper's renewals, the partial settlement and the loop all
    meet the refusal: the worker waits instead of exiting 1, and once Redis accepts writes
    again every message has been handled exactly once."""
    client: Any = own_redis.client()
    add_payloads(client, 10)
    faulty = {**env, "TEST_FAULT": fault, "TEST_FAULT_UID": "4", "TEST_AFTER_FAULT_S": "1"}
    log_path = tmp_path / "worker.log"
    worker = start_worker(faulty, "tests.support.outage_handlers:refuse_after", log_path, "--batch-size", "10")
    code_word = fault.upper()
    try:
        assert wait_until(lambda: _waiting_on(log_path.read_text(), code_word), 60), log_path.read_text()[-3000:]
        assert wait_until(lambda: "lease renewal failed" in log_path.read_text(), 60), log_path.read_text()[-3000:]
        assert worker.poll() is None, "the worker must wait, not exit"
        CLEAR[fault](client)
        code, _ = finish(worker, 60)
    finally:
        worker.kill()
        with contextlib.suppress(redis.ResponseError):
            client.script_kill()
        client.config_set("stop-writes-on-bgsave-error", "no")
        client.config_set("min-replicas-to-write", 0)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert recorded(env) == Counter({make_payload(uid).idempotency_key: 1 for uid in range(10)})
    assert client.xpending(STREAM, GROUP)["pending"] == 0 and client.xlen(KEYS.dlq) == 0


def _waiting_on(log: str, *codes: str) -> bool:
    return any("Redis unavailable" in line and any(code in line for code in codes) for line in log.splitlines())


def test_cluster_down_is_waited_out_and_nothing_is_handled_twice(tmp_path):
    """A Redis Cluster goes down (a slot no node serves: CLUSTERDOWN, and redis-py's "All
    slots are not covered", which is not even a RedisError) in the middle of a batch: the
    worker waits instead of exiting 1, and once the slot is served again every message has
    been handled exactly once."""
    cluster = RedisClusterSandbox(tmp_path / "cluster").start()
    try:
        client: Any = cluster.client()
        add_payloads(client, 10)
        slot, owner = client.keyslot("elsewhere"), client.get_node_from_key("elsewhere").port
        assert slot != client.keyslot(STREAM)
        records, markers = tmp_path / "records", tmp_path / "markers"
        records.mkdir()
        markers.mkdir()
        env = {**fast_worker_env(cluster.url, records), "REDIS_CLUSTER": "true", "TEST_MARKER_DIR": str(markers),
               "TEST_FAULT": "clusterdown", "TEST_FAULT_UID": "4", "TEST_AFTER_FAULT_S": "1",
               "TEST_CLUSTER_SLOT": str(slot), "TEST_CLUSTER_PORTS": ",".join(str(n.port) for n in cluster.nodes)}
        log_path = tmp_path / "worker.log"
        worker = start_worker(env, "tests.support.outage_handlers:refuse_after", log_path, "--batch-size", "10")
        try:
            assert wait_until(lambda: _waiting_on(log_path.read_text(), "ClusterDown", "not covered"), 60), \
                log_path.read_text()[-3000:]
            assert worker.poll() is None, "the worker must wait, not exit"
            redis.Redis(port=owner).execute_command("CLUSTER ADDSLOTS", slot)
            code, _ = finish(worker, 60)
        finally:
            worker.kill()
        log = log_path.read_text()
        assert code == 0 and "Traceback" not in log, log[-3000:]  # no thread (the lease keeper's) died
        assert recorded(env) == Counter({make_payload(uid).idempotency_key: 1 for uid in range(10)})
        assert client.xpending(STREAM, GROUP)["pending"] == 0  # its slot map predates the outage
    finally:
        cluster.stop()


@pytest.fixture
def aof_redis(tmp_path):
    """A redis-server of the test's own, persisting every write (it is restarted)."""
    server = RedisServer(tmp_path / "aof-redis", extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    yield server
    server.stop()


# A circuit breaker that opens at the first failure and would wait 10 minutes before a trial:
# the worker must not sit it out (it only reports).
SLOW_BREAKER = {"HEALTH_BREAKER_FAILURES": "1", "HEALTH_BREAKER_RESET_SECONDS": "600"}
# Bounds the wait for a burst of 5 to finish once Redis serves again. The old wait slept out
# the breaker (capped at 30 s) after the failure the test reacts to; the probe takes 0.5 s.
RESUME_BOUND_S = 20


@pytest.mark.parametrize("fault", ["oom", "restart"])
def test_worker_resumes_once_redis_serves_again_not_after_its_breaker(env, aof_redis, tmp_path, fault):
    """Redis full (OOM) or down when the worker starts; the worker's breaker opens at once
    with a 10-minute reset; as soon as Redis serves again the worker drains its 5 messages,
    well inside the time the breaker (or the old 30 s back-off) would have made it wait."""
    client: Any = aof_redis.client()
    add_payloads(client, 5)
    if fault == "oom":
        client.config_set("maxmemory", 1)
    else:
        aof_redis.stop()
    log_path = tmp_path / "worker.log"
    worker = start_worker({**env, **SLOW_BREAKER, "REDIS_URL": aof_redis.url}, "tests.support.handlers:record",
                          log_path)
    try:
        assert wait_until(lambda: "Redis unavailable" in log_path.read_text(), 60), log_path.read_text()[-3000:]
        if fault == "oom":
            client.config_set("maxmemory", 0)
        else:
            aof_redis.start()
        code, _ = finish(worker, RESUME_BOUND_S)
    finally:
        worker.kill()
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert recorded(env) == Counter({make_payload(uid).idempotency_key: 1 for uid in range(5)})
    assert aof_redis.client().xpending(STREAM, GROUP)["pending"] == 0
