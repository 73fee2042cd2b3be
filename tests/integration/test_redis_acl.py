"""config/redis.conf and the ACL users on a real redis-server: producer and worker run with
their own users; what they must not do is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, USER, base_env, imap_admin, producer_cmd

pytestmark = pytest.mark.slow
PASSWORDS = {"producer": "p-" + "1" * 20, "worker": "w-" + "2" * 20, "metrics": "m-" + "3" * 20,
             "admin": "a-" + "4" * 20}


@pytest.fixture
def acl_redis(tmp_path):
    acl = (ROOT / "config" / "users.acl.example").read_text()
    for user, password in PASSWORDS.items():
        acl = acl.replace(f"CHANGE-ME-{user}", password)
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    (tmp_path / "redis.conf").write_text(
        f"include {ROOT / 'config' / 'redis.conf'}\n"
        f"port {port}\ndir {tmp_path}\naclfile {tmp_path / 'users.acl'}\nbind 127.0.0.1\n")
    proc = subprocess.Popen(["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.PIPE, text=True)
    admin = redis.Redis(port=port, username="admin", password=PASSWORDS["admin"])
    for _ in range(100):
        if proc.poll() is not None:
            pytest.fail(f"redis-server refused the configuration: {proc.stdout.read()[-2000:]}")
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            __import__("time").sleep(0.05)
    yield port, admin
    proc.terminate()
    proc.wait(10)


def url(port: int, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/0"


def test_production_settings_are_in_force(acl_redis):
    """config/redis.conf enforces noeviction, AOF everysec and protected mode, and the default user is off."""
    _, admin = acl_redis
    config = admin.config_get("*")
    assert config["maxmemory-policy"] == "noeviction"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert config["protected-mode"] == "yes"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis[0]).ping()  # the default user is off


def test_producer_and_worker_run_with_their_own_users(acl_redis, mailbox):
    """Producer and worker do their whole job with only their own ACL users."""
    port, admin = acl_redis
    mailbox.append(sample_message(1), sample_message(2))
    env = {**os.environ, **base_env(mailbox.server.port, url(port, "producer"), mailbox.name)}
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert admin.xlen("email_ingestion_stream") == 2
    worker_env = {**os.environ, "REDIS_URL": url(port, "worker"), "WORKER_BLOCK_TIMEOUT_MS": "200",
                  "WORKER_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "acl", "--handler", "noop",
                           "--burst"], env=worker_env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert admin.xpending("email_ingestion_stream", "email_processor_group")["pending"] == 0


@pytest.mark.parametrize(("user", "command"), [
    ("worker", ("FLUSHALL",)), ("producer", ("FLUSHALL",)), ("worker", ("CONFIG", "SET", "appendonly", "no")),
    ("producer", ("KEYS", "*")), ("worker", ("SET", "someone_elses_key", "x")), ("metrics", ("SET", "k", "v")),
    ("producer", ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "email_ingestion_stream", ">")),
])
def test_forbidden_commands_are_refused(acl_redis, user, command):
    """Each ACL user is refused the commands outside its role with NoPermissionError."""
    port, _ = acl_redis
    client = redis.Redis(port=port, username=user, password=PASSWORDS[user])
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)


def test_metrics_user_can_read(acl_redis):
    """The metrics user can read stream length and memory info."""
    port, admin = acl_redis
    admin.xadd("email_ingestion_stream", {"payload": "{}"})
    client = redis.Redis(port=port, username="metrics", password=PASSWORDS["metrics"])
    assert client.xlen("email_ingestion_stream") == 1 and "used_memory" in client.info("memory")


@pytest.mark.timeout(120)
def test_per_mailbox_streams_work_with_the_least_privilege_users(acl_redis, mailbox, tmp_path):
    """MAILBOXES_FILE with a stream per mailbox (one cluster-style {tag}): the long-running
    producer (leases, registry, fenced emit) and a worker on each stream need nothing beyond
    their ACL users."""
    import time

    port, admin = acl_redis
    other = f"{mailbox.name}-2"
    client = imap_admin(mailbox.server)
    client.create_folder(other)
    client.append(other, sample_message(3))
    client.logout()
    mailbox.append(sample_message(1), sample_message(2))
    streams = {"email_ingestion_stream_sales": (mailbox.name, 2), "{email_ingestion_stream_support}": (other, 1)}
    path = tmp_path / "mailboxes.toml"
    path.write_text("".join(f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{name}"\nstream = "{stream}"\n\n'
                            for stream, (name, _) in streams.items()))
    env = {**os.environ, **base_env(mailbox.server.port, url(port, "producer"), mailbox.name),
           "MAILBOXES_FILE": str(path), "PRODUCER_LEASE_MS": "3000"}
    producer = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while any(admin.xlen(s) < n for s, (_, n) in streams.items()) and time.monotonic() < deadline:
            assert producer.poll() is None, producer.communicate()[1][-2000:]
            time.sleep(0.2)
        assert [admin.xlen(s) for s in streams] == [n for _, n in streams.values()]
    finally:
        producer.terminate()
        _, errors = producer.communicate(timeout=30)
    assert producer.returncode == 0 and "NOPERM" not in errors, errors[-2000:]
    worker_env = {**os.environ, "REDIS_URL": url(port, "worker"), "WORKER_BLOCK_TIMEOUT_MS": "200",
                  "WORKER_METRICS_PORT": "0"}
    for stream in streams:
        done = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "acl", "--handler", "noop",
                               "--stream", stream, "--burst"], env=worker_env, capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        assert admin.xpending(stream, "email_processor_group")["pending"] == 0
        assert admin.xinfo_groups(stream)[0]["entries-read"] == streams[stream][1]
