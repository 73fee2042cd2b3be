"""Backup and restore on a real redis-server: entries, pending lists and UID state survive."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys

import pytest
import redis

from email_ingestion.common.keys import MailboxKeys
from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import StateStore
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow
STREAM, GROUP = "email_ingestion_stream", "email_processor_group"


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


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
    # A loaded machine can take longer than the 5 s the fixed loop of 100 tries allowed.
    assert wait_until(lambda: _answers(client), timeout_s=60, interval_s=0.05), "redis-server never answered"
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
    """Backup, wipe, restore --force --flush: entries, groups, pending lists and UID state are identical."""
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
    """restore.py refuses a file that is not an RDB file, exiting 1."""
    bad = tmp_path / "x.rdb"
    bad.write_bytes(b"NOTREDIS at all")
    done = subprocess.run([sys.executable, "scripts/restore.py", str(bad), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not an RDB file" in done.stderr


def test_unreachable_redis_is_a_clear_error(tmp_path):
    """backup.py against an unreachable Redis exits 1 with a one-line "backup:" error and no traceback."""
    done = subprocess.run([sys.executable, "scripts/backup.py", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                           "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("backup: ") and "Traceback" not in done.stderr


def test_backup_reads_settings_like_the_services_private_compressed_verified(server):
    """REDIS_URL only in an env file (not exported): --compress writes a 0600 .rdb.gz in a 0700
    directory, verified; restore --file of it brings the data back."""
    tmp_path, port, client = server
    add_payloads(client, 3)
    (tmp_path / "svc.env").write_text(f"REDIS_URL=redis://127.0.0.1:{port}/0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    out = tmp_path / "private" / "backups"
    done = subprocess.run([sys.executable, str(ROOT / "scripts/backup.py"), "--env-file", str(tmp_path / "svc.env"),
                           "--output-dir", str(out), "--compress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [backup] = list(out.glob("redis-backup-*.rdb.gz"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    with gzip.open(backup) as handle:
        assert handle.read(5) == b"REDIS"
    listed = subprocess.run([sys.executable, str(ROOT / "scripts/backup.py"), "--list", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert '"checksum_ok": true' in listed.stdout
    client.flushall()
    restored = subprocess.run([sys.executable, str(ROOT / "scripts/restore.py"), "--file", str(backup), "--force",
                               "--env-file", str(tmp_path / "svc.env")], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr
    assert "SHA-256 matches" in restored.stdout and client.xlen(STREAM) == 3


def test_backup_finds_dot_env_in_the_working_directory(server):
    """`backup.py --output-dir DIR` as the README shows it, with REDIS_URL only in ./.env."""
    tmp_path, port, client = server
    work = tmp_path / "install"
    work.mkdir()
    (work / ".env").write_text(f"REDIS_URL=redis://127.0.0.1:{port}/0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts/backup.py"), "--output-dir", "backups"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(list((work / "backups").glob("redis-backup-*.rdb"))) == 1


def test_restore_needs_exactly_one_file(tmp_path):
    """Neither or both of FILE and --file is a usage error (exit 2)."""
    neither = subprocess.run([sys.executable, "scripts/restore.py"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    both = subprocess.run([sys.executable, "scripts/restore.py", "a.rdb", "--file", "b.rdb"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert neither.returncode == 2 and both.returncode == 2 and "--file" in both.stderr
