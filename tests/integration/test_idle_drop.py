"""Issue 9 §8: a server that closes the connection during IDLE without BYE (Cyrus on
shutdown). The producer must notice at once: no CPU spin, new mail arrives promptly."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import producer_cmd
from tests.support.machine import scaled_budget_s
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow

WINDOW_S = 3.0  # CPU is measured over this long after the drop
MAX_CPU_S = 1.0  # a spinning loop burns about WINDOW_S; a reconnect and an IDLE, a fraction
# (here: scaled by the machine's measured slowness, as a reconnect costs more CPU on a slower one)


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_connection_closed_during_idle_is_replaced_without_spinning(mailbox, producer_env, dovecot, redis_client):
    """Proxy closes the idling connection: CPU stays low and a message sent afterwards
    arrives long before the IDLE timeout (120 s here) would have noticed the loss."""
    proxy = TcpProxy(dovecot.port).start()
    env = {**producer_env, "IMAP_PORT": str(proxy.port), "POLL_INTERVAL_SECONDS": "120"}
    proc = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        mailbox.append(sample_message(1))
        assert wait_until(lambda: redis_client.xlen("email_ingestion_stream") == 1, 60)
        assert wait_until(lambda: b"IDLE" in proxy.last_from_client, 30)
        connections = proxy.connections
        before = cpu_seconds(proc.pid)
        assert proxy.close_existing() == 1
        time.sleep(WINDOW_S)  # the measurement window, not a wait for an outcome
        used, allowed = cpu_seconds(proc.pid) - before, min(scaled_budget_s(MAX_CPU_S), WINDOW_S / 2)
        assert used < allowed, f"{used:.2f} s of CPU in {WINDOW_S} s after the drop"
        assert wait_until(lambda: proxy.connections > connections and b"IDLE" in proxy.last_from_client, 30)
        mailbox.append(sample_message(2))
        assert wait_until(lambda: redis_client.xlen("email_ingestion_stream") == 2, 30)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        proxy.stop()
    assert proc.returncode == 0, stderr[-2000:]
