"""`jsonl:PATH`: append one JSON object per email to a file, each idempotency key once.

Workers on one host share the file through an exclusive lock; under the lock a worker first
reads what others appended since it last looked, so a message handled twice (a worker
stopped past the claim time and then resumed, a retry after a lost ack) is written once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from email_ingestion.common.errors import SettingsError
from email_ingestion.common.filelock import locked
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext


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


class JsonlHandler:
    def __init__(self, path: str | Path) -> None:
        self.path = check_path(str(path))
        self._keys: set[str] = set()
        self._offset = 0

    def __call__(self, payload: EmailPayload, ctx: HandlerContext) -> None:
        with locked(self.path.with_name(self.path.name + ".lock")):
            self._catch_up()
            if payload.idempotency_key in self._keys:
                ctx.logger.info("already in the JSONL file; not written again", extra={"stream_id": ctx.stream_id})
                return
            line = (payload.to_json() + "\n").encode()
            with open(self.path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                self._offset = handle.tell()
            self._keys.add(payload.idempotency_key)

    def _catch_up(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            try:
                self._keys.add(json.loads(line)["idempotency_key"])
            except (ValueError, KeyError, TypeError):
                continue  # a foreign or damaged line: not ours to judge
        self._offset += len(complete)
