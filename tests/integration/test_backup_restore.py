"""Backup and restore on a real redis-server: entries, pending lists and UID state survive."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from email_ingestion.common.keys import MailboxKeys
from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import StateStore
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
STREAM, GROUP = "email_ingestion_stream", "email_processor_group"


@pytest.fixture
def server(tmp_path):
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"include {ROOT / 'config' / 'redis.conf'}\nport {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"pidfile {tmp_path / 'redis.pid'}\n")
    (tmp_path / "start.sh").write_text(f"#!/bin/sh\nexec redis-server {conf} --daemonize yes\n")
    (tmp_path / "start.sh").chmod(0o755)
    # The production config names an ACL file; give the test server an empty one.
    (tmp_path / "users.acl").write_text("user default on nopass ~* &* +@all\n")
    conf.write_text(conf.read_text() + f"aclfile {tmp_path / 'users.acl'}\n")
    subprocess.run([str(tmp_path / "start.sh")], check=True)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield tmp_path, port, client
    try:
        client.shutdown(nosave=True)
    except redis.RedisError:
        pass


def snapshot(client: redis.Redis) -> dict[str, object]:
    keys = MailboxKeys(STREAM, "alice@example.com", "INBOX")
    return {
        "entries": client.xrange(STREAM),
        # Everything about pending entries but the idle time, which keeps running.
        "pending": [(p["message_id"], p["consumer"], p["times_delivered"])
                    for p in client.xpending_range(STREAM, GROUP, "-", "+", 100)],
        "groups": [(g["name"], g["last-delivered-id"], g["pending"]) for g in client.xinfo_groups(STREAM)],
        "state": client.hgetall(keys.state),
        "seen": client.hgetall(keys.seen),
    }


def test_backup_wipe_restore_gives_identical_state(server):
    tmp_path, port, client = server
    url = f"redis://127.0.0.1:{port}/0"
    store = StateStore(client=client, keys=MailboxKeys(STREAM, "alice@example.com", "INBOX"))
    store.emit(77, 3, [Emission(f"fp{i}", i, f'{{"uid": {i}}}') for i in (1, 2, 3)])
    add_payloads(client, 5)
    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=4)
    before = snapshot(client)
    assert len(before["pending"]) == 4 and before["state"][b"last_uid"] == b"3"

    done = subprocess.run([sys.executable, "scripts/backup.py", "--redis-url", url, "--output-dir",
                           str(tmp_path / "backups")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [backup] = sorted((tmp_path / "backups").glob("redis-backup-*.rdb"))
    listed = subprocess.run([sys.executable, "scripts/backup.py", "--list", "--output-dir", str(tmp_path / "backups")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert '"checksum_ok": true' in listed.stdout

    client.flushall()
    assert client.dbsize() == 0
    dry = subprocess.run([sys.executable, "scripts/restore.py", str(backup), "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "SHA-256 matches" in dry.stdout and "redis-check-rdb OK" in dry.stdout
    manual = subprocess.run([sys.executable, "scripts/restore.py", str(backup), "--redis-url", url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "Manual restore (nothing was changed)" in manual.stdout and client.dbsize() == 0
    client.set("written-after-the-backup", "x")
    forced = subprocess.run([sys.executable, "scripts/restore.py", str(backup), "--redis-url", url, "--force",
                             "--flush"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert snapshot(client) == before
    assert client.get("written-after-the-backup") is None  # --flush: the state is the backup's, exactly
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_a_damaged_backup_is_refused(tmp_path):
    bad = tmp_path / "x.rdb"
    bad.write_bytes(b"NOTREDIS at all")
    done = subprocess.run([sys.executable, "scripts/restore.py", str(bad), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not an RDB file" in done.stderr


def test_unreachable_redis_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "scripts/backup.py", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                           "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("backup: ") and "Traceback" not in done.stderr
