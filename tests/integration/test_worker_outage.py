"""Issue 19 item 4: a handler-wide outage (a webhook answering 503 to everything, a disk
full under jsonl:) pauses the worker instead of draining the stream into the DLQ; a
message failing alone still reaches the DLQ. Real worker processes, real handlers, a real
redis-server, a loopback HTTP server and a tiny tmpfs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until
from tests.support.worker_env import fast_worker_env

pytestmark = pytest.mark.slow

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
KEYS = StreamKeys.of(STREAM, GROUP, "email_ingestion_dlq")
SECRET = "outage-test-secret"


class Webhook:
    """A loopback endpoint: 503 to everything while `down`, 500 forever to `poison_key`,
    else 200; counts the keys it accepted."""

    def __init__(self) -> None:
        self.down = True
        self.poison_key = ""
        self.accepted: Counter[str] = Counter()
        self.refused = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(hook.answer(self.headers["X-Idempotency-Key"]))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def answer(self, key: str) -> int:
        with self._lock:
            if self.down or key == self.poison_key:
                self.refused += 1
                return 503 if self.down else 500
            self.accepted[key] += 1
            return 200


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.httpd.serve_forever, daemon=True)
    thread.start()
    yield hook
    hook.httpd.shutdown()
    hook.httpd.server_close()


@pytest.fixture
def env(redis_server, redis_client, tmp_path) -> dict[str, str]:
    records = tmp_path / "records"
    records.mkdir()
    return {**fast_worker_env(redis_server.url, records), "WEBHOOK_SECRET": SECRET,
            "WORKER_METRICS_PORT": str(free_port()), "MAX_RETRIES": "2", "RETRY_BASE_SECONDS": "0.05",
            "RETRY_CAP_SECONDS": "0.1", "HANDLER_OUTAGE_FAILURES": "3", "HANDLER_OUTAGE_PROBE_MIN_SECONDS": "0.1",
            "HANDLER_OUTAGE_PROBE_MAX_SECONDS": "0.4"}


def start_worker(env: dict[str, str], handler: str, log_path: Path) -> subprocess.Popen[str]:
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "w", "--handler", handler,
                                 "--burst", "--batch-size", "20"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=log_file, text=True)


def get(env: dict[str, str], path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def dead_letters(client: Any) -> list[str]:
    return [json.loads(fields[b"payload"])["idempotency_key"] for _, fields in client.xrange(KEYS.dlq)]


def assert_paused_and_reported(env: dict[str, str], client: Any, cause: str) -> None:
    """While the breaker is open: not ready with the cause, /status, the metric and the
    heartbeat record say so, and nothing is dead-lettered."""
    code, body = get(env, "/ready")
    assert code == 503 and "handler outage" in body and cause in body, body
    status = json.loads(get(env, "/status")[1])
    assert cause in status["handler_outage"]["error"], status
    metrics = get(env, "/metrics")[1]
    assert f'email_ingestion_worker_handler_outage{{group="{GROUP}",stream="{STREAM}"}} 1.0' in metrics
    record = json.loads(client.get(KEYS.heartbeat("w")))
    assert cause in record["handler_outage"]["error"], record
    assert client.xlen(KEYS.dlq) == 0


def test_webhook_answering_503_to_everything_pauses_instead_of_dead_lettering(env, redis_client, webhook, tmp_path):
    """200 messages against a webhook that answers 503 to all: the worker opens its breaker
    and probes; nothing reaches the DLQ; once the endpoint answers again every message is
    delivered once, and the one message it refuses alone (500) reaches the DLQ."""
    add_payloads(redis_client, 200)
    webhook.poison_key = make_payload(7).idempotency_key
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, f"webhook:{webhook.url}", log_path)
    try:
        assert wait_until(lambda: "handler outage" in get(env, "/ready")[1], 60), log_path.read_text()[-3000:]
        probes_before = webhook.refused
        assert wait_until(lambda: webhook.refused >= probes_before + 3, 60), "the worker must probe"
        assert_paused_and_reported(env, redis_client, "webhook answered HTTP 503")
        webhook.down = False
        code, _ = finish(worker, 180)
    finally:
        worker.kill()
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert dead_letters(redis_client) == [webhook.poison_key]
    expected = {make_payload(uid).idempotency_key: 1 for uid in range(200) if uid != 7}
    assert webhook.accepted == Counter(expected)
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0 and redis_client.zcard(KEYS.retries) == 0
    assert "webhook answered HTTP 503" in log  # the message, not only the type


@pytest.fixture
def full_disk(tmp_path) -> Iterator[tuple[Path, Path]]:
    """A 1 MiB tmpfs filled up by a filler file: (the mount, the filler)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    filler = mount / "filler"
    try:
        with open(filler, "wb") as handle:
            handle.write(b"\0" * (2 << 20))
    except OSError:
        pass  # full: that is the point
    try:
        yield mount, filler
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_jsonl_on_a_full_disk_pauses_and_writes_everything_once_after(env, redis_client, full_disk, tmp_path):
    """jsonl: on a full filesystem (ENOSPC for every message): nothing is dead-lettered; once
    room is made the file holds every message exactly once."""
    mount, filler = full_disk
    add_payloads(redis_client, 60)
    log_path = tmp_path / "worker.log"
    out = mount / "emails.jsonl"
    worker = start_worker(env, f"jsonl:{out}", log_path)
    try:
        assert wait_until(lambda: "handler outage" in get(env, "/ready")[1], 60), log_path.read_text()[-3000:]
        assert_paused_and_reported(env, redis_client, "No space left on device")
        filler.unlink()
        code, _ = finish(worker, 180)
    finally:
        worker.kill()
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert redis_client.xlen(KEYS.dlq) == 0
    keys = Counter(json.loads(line)["idempotency_key"] for line in out.read_text().splitlines())
    assert keys == Counter({make_payload(uid).idempotency_key: 1 for uid in range(60)})
    assert "No space left on device" in log
