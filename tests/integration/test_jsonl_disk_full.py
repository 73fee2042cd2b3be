"""`jsonl:` on a disk that fills up (issue 19 item 3): a real worker process writes to a file
on a tiny tmpfs (ENOSPC; needs root to mount) or under a file size limit (RLIMIT_FSIZE:
EFBIG, any user). Writes fail part-way; once there is room again, every line of the file is
one whole record, each message's exactly once, and nothing is left pending or dead.

Start-up reads only the newest records, not the whole file (bytes read, from /proc/self/io).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.jsonl_handler import JsonlHandler
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys.of(STREAM, GROUP, "email_ingestion_dlq")
COUNT = 30  # about 3.6 KB each: 108 KB in all
ROOM_BYTES = 20_000  # room for about five records while "full"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, mounted for this test (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def start_worker(redis_url: str, path: Path, *, burst: bool, fsize_limit: int | None = None) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "100",
           "MAX_RETRIES": "1000", "RETRY_BASE_SECONDS": "0.05", "RETRY_CAP_SECONDS": "0.2", "WORKER_BATCH_SIZE": "5"}

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "jsonl", "--handler", f"jsonl:{path}",
                             "--env-file", os.devnull, *(["--burst"] if burst else [])], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit)


def assert_every_line_whole_and_once(path: Path, expected: set[str]) -> None:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends in a partial line"
    keys = Counter(json.loads(line)["idempotency_key"] for line in lines[:-1])  # raises on a glued line
    assert set(keys) == expected and set(keys.values()) == {1}


def fail_then_recover(redis_server, redis_client, path: Path, *, fsize_limit: int | None, make_room) -> None:
    expected = {key for key in (make_payload(i).idempotency_key for i in range(COUNT))}
    add_payloads(redis_client, COUNT)
    worker = start_worker(redis_server.url, path, burst=False, fsize_limit=fsize_limit)
    try:
        assert wait_until(lambda: redis_client.zcard(KEYS.retries) > 0, timeout_s=60), "no write failed"
    finally:
        worker.send_signal(signal.SIGTERM)
        code, err = finish(worker, timeout_s=60)
    assert code == 0, err[-2000:]
    make_room()
    code, err = finish(start_worker(redis_server.url, path, burst=True), timeout_s=120)
    assert code == 0, err[-2000:]
    assert_every_line_whole_and_once(path, expected)
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert not redis_client.exists(KEYS.retries, KEYS.dlq)


def test_a_full_tmpfs_leaves_no_partial_line(tiny_disk, redis_server, redis_client):
    """ENOSPC part-way through a record: the line is cut back, the message retried; after
    room is made every record is whole and written once."""
    filler = tiny_disk / "filler"
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    filler.write_bytes(b"\0" * (free - ROOM_BYTES))
    fail_then_recover(redis_server, redis_client, tiny_disk / "out.jsonl", fsize_limit=None, make_room=filler.unlink)


def test_a_file_size_limit_leaves_no_partial_line(redis_server, redis_client, tmp_path):
    """EFBIG (RLIMIT_FSIZE) part-way through a record, as any user can make it: the same."""
    fail_then_recover(redis_server, redis_client, tmp_path / "out.jsonl", fsize_limit=ROOM_BYTES,
                      make_room=lambda: None)


def test_a_partial_line_left_by_a_killed_writer_is_cut_back(tmp_path):
    """A file ending in half a record (a writer killed mid-write): the next record starts on
    a line of its own, the half line is gone."""
    path = tmp_path / "out.jsonl"
    whole = make_payload(1).to_json() + "\n"
    path.write_text(whole + make_payload(2).to_json()[:100])
    JsonlHandler(path)(make_payload(3), context())
    assert [json.loads(line)["uid"] for line in path.read_text().splitlines()] == [1, 3]


def context() -> HandlerContext:
    return HandlerContext(idempotency_key="k", attempt=1, stream_id="1-0", consumer="c",
                          logger=logging.getLogger("test"))


def bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_start_up_reads_only_the_newest_records(tmp_path):
    """A 20,000-record file with a window of 100: the first call reads a small part of it,
    still finds a recent duplicate, and writes a new record once."""
    path = tmp_path / "out.jsonl"
    record = make_payload(0).to_json()
    with open(path, "w") as handle:
        for uid in range(20_000):
            handle.write(record.replace('"imap:alice@example.com:INBOX:1:0"', f'"key-{uid}"', 1) + "\n")
    size = path.stat().st_size
    handler = JsonlHandler(path, dedup_records=100)
    before = bytes_read()
    duplicate = make_payload(0).model_copy(update={"idempotency_key": "key-19990"})
    handler(duplicate, context())
    assert bytes_read() - before < size / 20  # not the whole file
    assert path.stat().st_size == size  # the recent duplicate was found, nothing written
    handler(make_payload(1), context())
    handler(make_payload(1), context())
    assert path.stat().st_size == size + len(make_payload(1).to_json()) + 1
