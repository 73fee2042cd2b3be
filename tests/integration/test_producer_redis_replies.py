"""Redis answers "not now" to a running producer fleet (issue 18 §11): a real redis-server made
to reply MISCONF (a failed background save with stop-writes-on-bgsave-error), NOREPLICAS
(min-replicas-to-write) and BUSY (a long script in another client) while the ownership round
and the mailboxes' writes run. The process must wait it out, not exit 1, and deliver every
message once when Redis recovers."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import USER, base_env, imap_admin, producer_cmd, stream_payloads
from tests.support.waits import finish, wait_until

pytestmark = pytest.mark.slow

STREAM = "email_ingestion_stream"


@contextlib.contextmanager
def misconf(admin: redis.Redis, root: Path) -> Iterator[None]:
    """Background saves fail (their directory is gone): writes are refused with MISCONF."""
    gone = root / f"gone-{uuid.uuid4().hex[:6]}"
    gone.mkdir()
    admin.config_set("save", "3600 1")  # MISCONF applies only with save points, as in the shipped redis.conf
    admin.config_set("dir", str(gone))
    gone.rmdir()
    admin.bgsave()
    assert wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 30)
    try:
        yield
    finally:
        admin.config_set("dir", str(root))
        assert wait_until(lambda: not admin.info("persistence")["rdb_bgsave_in_progress"], 30)
        admin.bgsave()
        assert wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "ok", 30)


@contextlib.contextmanager
def noreplicas(admin: redis.Redis, root: Path) -> Iterator[None]:
    """min-replicas-to-write 1 with no replica: writes are refused with NOREPLICAS."""
    admin.config_set("min-replicas-to-write", 1)
    try:
        yield
    finally:
        admin.config_set("min-replicas-to-write", 0)


@contextlib.contextmanager
def busy(admin: redis.Redis, root: Path) -> Iterator[None]:
    """A script loops in another client past busy-reply-threshold: everyone else gets BUSY."""
    admin.config_set("busy-reply-threshold", 200)
    looping = redis.Redis(host="127.0.0.1", port=admin.connection_pool.connection_kwargs["port"])
    ended: list[BaseException] = []

    def loop() -> None:
        try:
            looping.eval("while true do end", 0)
        except redis.RedisError as exc:
            ended.append(exc)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        assert wait_until(lambda: _kill_script(admin), 30)
        thread.join(30)
        assert ended, "the looping script did not end"


def _kill_script(admin: redis.Redis) -> bool:
    try:
        admin.script_kill()
    except redis.ResponseError as exc:
        return "NOTBUSY" in str(exc)
    return True


CONDITIONS: dict[str, Callable[[redis.Redis, Path], contextlib.AbstractContextManager[None]]] = {
    "MISCONF": misconf, "NOREPLICAS": noreplicas, "BUSY": busy}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("code", list(CONDITIONS))
def test_redis_saying_not_now_to_the_ownership_round_is_waited_out(tmp_path, dovecot, code):
    """While Redis answers `code` to the ownership round (and to the mailboxes' writes), the
    producer keeps running; afterwards every message is in the stream exactly once."""
    server = RedisServer(tmp_path / "redis", extra_args=("--enable-protected-configs", "yes")).start()
    admin = server.client()
    names = [f"r-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    client = imap_admin(dovecot)
    for name in names:
        client.create_folder(name)
        client.append(name, sample_message(1))
    client.logout()
    path = tmp_path / "mailboxes.toml"
    path.write_text("".join(f'[[mailbox]]\nuser = "{USER}"\nmailbox = "{n}"\n' for n in names), encoding="utf-8")
    env = {**base_env(dovecot.port, server.url, "INBOX"), "MAILBOXES_FILE": str(path), "PRODUCER_LEASE_MS": "3000",
           "POLL_INTERVAL_SECONDS": "2", "PATH": "/usr/bin:/bin"}
    log = tmp_path / "producer.log"
    proc = subprocess.Popen(producer_cmd(), env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"), text=True)
    try:
        assert wait_until(lambda: admin.xlen(STREAM) == 2, 60), log.read_text()[-3000:]
        with CONDITIONS[code](admin, tmp_path):
            said = wait_until(lambda: _round_failed_with(log, code), 60)
            client = imap_admin(dovecot)
            for name in names:
                client.append(name, sample_message(2))
            client.logout()
            assert said, log.read_text()[-3000:]
            assert proc.poll() is None, log.read_text()[-3000:]
        assert wait_until(lambda: admin.xlen(STREAM) == 4, 120), (admin.xlen(STREAM), log.read_text()[-3000:])
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code_, _ = finish(proc, 30)
        payloads = stream_payloads(admin)
        server.stop()
    assert code_ == 0, log.read_text()[-3000:]
    counts = Counter((p["mailbox"], p["message_id"]) for p in payloads)
    assert len(counts) == 4 and max(counts.values()) == 1, counts


def _round_failed_with(log: Path, code: str) -> bool:
    return any("ownership round failed" in line and code in line for line in log.read_text().splitlines())
