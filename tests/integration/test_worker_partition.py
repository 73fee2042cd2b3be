"""Issue 19 item 13: a worker cut off from Redis for 2 s (every packet dropped, the reply to
its blocked read lost for good) keeps its heartbeat alive, and the cut is logged. A real
worker process, a real redis-server, and the sandbox's TCP proxy as the network."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until
from tests.support.worker_env import fast_worker_env

pytestmark = pytest.mark.slow

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys.of(STREAM, GROUP, "email_ingestion_dlq")
PARTITION_S = 2.0  # the fault's length, not a wait for a condition


@pytest.fixture
def proxy(redis_server) -> Iterator[TcpProxy]:
    network = TcpProxy(redis_server.port).start()
    yield network
    network.stop()


class Watch:
    """Samples EXISTS on the heartbeat key (straight to Redis, not through the proxy) until
    stopped; counts the samples that found it missing."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key
        self.samples = self.missing = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples += 1
            self.missing += 0 if self.client.exists(self.key) else 1

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_heartbeat_outlives_a_short_partition_and_the_cut_is_logged(redis_client, proxy, tmp_path):
    """The worker idles in a blocked XREADGROUP when the network drops everything for 2 s;
    the read's reply is lost, so the loop waits out REDIS_SOCKET_TIMEOUT_SECONDS (10 s),
    longer than HEARTBEAT_TTL_MS (9 s). The heartbeat must never lapse (a rescuer would
    take the worker for dead), a warning must be logged, and the worker must handle new
    mail afterwards."""
    records = tmp_path / "records"
    records.mkdir()
    env = {**fast_worker_env(f"redis://127.0.0.1:{proxy.port}/0", records), "HEARTBEAT_TTL_MS": "9000",
           "WORKER_BLOCK_TIMEOUT_MS": "1000", "LEASE_MS": "9000", "REDIS_SOCKET_TIMEOUT_SECONDS": "10"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "cut", "--handler",
                                   "tests.support.handlers:record"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=log_file, text=True)
    try:
        assert wait_until(lambda: "consumer group created" in log_path.read_text(), 60), log_path.read_text()
        assert wait_until(lambda: redis_client.exists(KEYS.heartbeat("cut")), 30)
        with Watch(redis_client, KEYS.heartbeat("cut")) as watch:
            proxy.partition()
            time.sleep(PARTITION_S)
            proxy.heal()
            add_payloads(redis_client, 1)
            assert wait_until(lambda: _recorded(records) == [make_payload(0).idempotency_key], 60), \
                log_path.read_text()[-3000:]
        worker.terminate()
        code, _ = finish(worker, 60)
    finally:
        worker.kill()
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert watch.samples > 0 and watch.missing == 0, f"heartbeat missing in {watch.missing} of {watch.samples} samples"
    assert '"level": "WARNING"' in log and ("Redis command failed" in log or "heartbeat renewal failed" in log), \
        log[-3000:]


def _recorded(records: Path) -> list[str]:
    return [key for path in records.glob("*.txt") for key in path.read_text().split()]
