"""`jsonl:PATH`: append one JSON object per email to a file, each idempotency key once.

Workers on one host share the file through an exclusive lock; under the lock a worker first
reads what others appended since it last looked, so a message handled twice (a worker
stopped past the claim time and then resumed, a retry after a lost ack) is written once.

Every line is whole (issue 19 item 3). A record is one `write` on an O_APPEND descriptor;
a write that fails or comes back short (disk full, file size limit), or whose fsync fails,
is cut back to where it began before the error is raised, so the message is retried and the
next record never lands after a partial line. A partial line found at the end of the file
(a process killed mid-write, or a version before this one) is cut back to the last newline
before anything is appended: it was never acknowledged, its message is retried.

What is fsynced when: the file, after each record and before the handler returns (so before
the message is acknowledged); the directory, when the file is created. A record that is in
the file was on disk when its message was acknowledged.

Deduplication reads keys only, and only the newest DEDUP_RECORDS records: at start the file
is read from the end back to the line that many records ago (never the whole file into
memory), and the set of keys is bounded. A message handled again later than DEDUP_RECORDS
records after its first record is written again; in practice the Redis idempotency marker
(IDEMPOTENCY_TTL_SECONDS) stops a settled message from being handled again at all, and this
file-level check covers the worker that died between writing and settling, whose message
comes back within CLAIM_HARD_LIMIT_MS.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.filelock import locked
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext

DEDUP_RECORDS = 100_000  # about 15 MB of keys; minutes of traffic at an fsync per record
_BLOCK = 1 << 16
# Our own lines start with these fields (EmailPayload's order): the key is read from the
# head of the line, without parsing a body that may be megabytes long.
_KEY_AT_HEAD = re.compile(rb'^\{"schema_version":\d+,"idempotency_key":("(?:[^"\\]|\\.)*")')


def check_path(spec_path: str) -> Path:
    """Checked at start, so a bad path fails the worker (exit 2) instead of every message."""
    where = f"invalid setting WORKER_HANDLER: jsonl:{spec_path}"
    if not spec_path.strip():
        raise SettingsError(f"{where}: the path is empty (jsonl:/var/lib/email-ingestion/emails.jsonl)")
    path = Path(spec_path)
    if path.is_dir():
        raise SettingsError(f"{where}: {path} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise SettingsError(f"{where}: directory {path.parent} does not exist (create it, owned by the worker's user)")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SettingsError(f"{where}: this user may not write {path}")
    return path


class RecentKeys:
    """The newest `limit` keys, in a set for lookups and a queue for forgetting the oldest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._set: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, key: str) -> bool:
        return key in self._set

    def add(self, key: str) -> None:
        if key in self._set:
            return
        self._set.add(key)
        self._order.append(key)
        if len(self._order) > self.limit:
            self._set.discard(self._order.popleft())


class JsonlHandler:
    def __init__(self, path: str | Path, *, dedup_records: int = DEDUP_RECORDS) -> None:
        self.path = check_path(str(path))
        self.dedup_records = dedup_records
        self._keys = RecentKeys(dedup_records)
        self._offset: int | None = None  # read up to here; None: not yet (start from the window)

    def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> None:
        with locked(self.path.with_name(self.path.name + ".lock")):
            fd = self._open()
            try:
                self._catch_up(fd)
                if payload.idempotency_key in self._keys:
                    ctx.logger.info("already in the JSONL file; not written again", extra={"stream_id": ctx.stream_id})
                    return
                self._offset = append_line(fd, (payload.to_json() + "\n").encode(), self.path)
                self._keys.add(payload.idempotency_key)
            finally:
                os.close(fd)

    def _open(self) -> int:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if created:  # the new name must survive a crash as well as the records in it
            _fsync_directory(self.path.parent)
        return fd

    def _catch_up(self, fd: int) -> None:
        """Keys of the complete lines others appended since we last looked."""
        size = os.fstat(fd).st_size
        if self._offset is None or self._offset > size:  # first call, or the file was replaced
            newest, self._offset = newest_keys(fd, size, self.dedup_records)
            for known in newest:
                self._keys.add(known)
        for line in complete_lines(fd, self._offset, size):  # a partial last line: append_line cuts it
            key = key_of(line)
            if key is not None:
                self._keys.add(key)
            self._offset += len(line)


def append_line(fd: int, line: bytes, path: Path) -> int:
    """Write `line` whole at the end of the file and fsync it; the new end. On any failure the
    file is cut back to where the line began, then the error is raised."""
    start = _cut_partial_tail(fd)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a short write: the device or the size limit is full
            raise OSError(errno.ENOSPC, f"short write to {path} ({written} of {len(line)} bytes)")
        os.fsync(fd)
    except OSError as exc:
        _truncate(fd, start)
        raise OSError(exc.errno, f"could not append a record to {path}: {exc.strerror or exc}; "
                                 "the partial line was cut back") from None
    return start + len(line)


def _cut_partial_tail(fd: int) -> int:
    """The end of the last complete line; anything after it is cut off first."""
    size = os.fstat(fd).st_size
    if size == 0 or _pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        begin = max(0, end - _BLOCK)
        newline = _pread(fd, end - begin, begin).rfind(b"\n")
        if newline != -1:
            return _truncate(fd, begin + newline + 1)
        end = begin
    return _truncate(fd, 0)


def _truncate(fd: int, size: int) -> int:
    os.ftruncate(fd, size)
    os.fsync(fd)
    return size


def newest_keys(fd: int, size: int, records: int) -> tuple[list[str], int]:
    """Keys of the newest `records` complete lines (oldest first), read backwards from the end
    in one pass, and the end of the newest complete line (where reading forwards resumes)."""
    keys: list[str] = []
    resume_at = 0
    for count, (line_end, line) in enumerate(lines_backwards(fd, size), start=1):
        resume_at = max(resume_at, line_end)
        key = key_of(line)
        if key is not None:
            keys.append(key)
        if count >= records:
            break
    return keys[::-1], resume_at


def lines_backwards(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(end offset, line with its newline) of each complete line, newest first; a partial last
    line is skipped. A line longer than a block is joined once, when its start is found."""
    end = size
    later: list[bytes] = []  # the chunks, in order, of the line being read, after `end`
    line_end: int | None = None  # where that line ends (after its newline); None: the partial tail
    while end > 0:
        begin = max(0, end - _BLOCK)
        block = _pread(fd, end - begin, begin)
        cut = len(block)
        while (newline := block.rfind(b"\n", 0, cut)) != -1:
            if line_end is not None:
                yield line_end, b"".join([block[newline + 1:cut], *later, b"\n"])
            later, line_end, cut = [], begin + newline + 1, newline
        later.insert(0, block[:cut])
        end = begin
    if line_end is not None:  # the file's first line
        yield line_end, b"".join([*later, b"\n"])


def complete_lines(fd: int, offset: int, size: int) -> Iterator[bytes]:
    """The complete lines (with their newline) from `offset` to `size`, read a block at a
    time: in memory at once, one block and the line it cuts."""
    head: list[bytes] = []  # the start of a line longer than a block, joined once it ends
    while offset < size:
        block = _pread(fd, min(_BLOCK, size - offset), offset)
        if not block:
            return
        offset += len(block)
        first, *rest = block.split(b"\n")
        if not rest:
            head.append(first)
            continue
        yield b"".join([*head, first, b"\n"])
        yield from (line + b"\n" for line in rest[:-1])
        head = [rest[-1]]


def key_of(line: bytes) -> str | None:
    """The idempotency key of a record line; None for a foreign or damaged line."""
    head = _KEY_AT_HEAD.match(line)
    try:
        if head is not None:
            return str(json.loads(head.group(1)))
        value = json.loads(line)["idempotency_key"]
        return value if isinstance(value, str) else None
    except (ValueError, KeyError, TypeError):
        return None  # not ours to judge


def _pread(fd: int, length: int, offset: int) -> bytes:
    # os.pread is POSIX only; with O_APPEND every write goes to the end wherever we seek.
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform without directory descriptors
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
