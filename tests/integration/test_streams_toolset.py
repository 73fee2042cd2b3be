"""Several streams, one toolset (issue 19 item 14): a real worker reading two streams that
share a hash tag, dead letters that record their stream, `email-dlq` and the exporter over
every stream the workers read (`--stream`, repeated, or WORKER_STREAMS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from email_ingestion.common.keys import dlq_stream
from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until

A, B = "{mail}alice", "{mail}bob"
GROUP = "email_processor_group"
COUNT = 14  # uids 0..13: 0 and 7 refused for good on each stream


def env_for(redis_url: str, records: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "200",
            "WORKER_METRICS_PORT": "0", "TEST_RECORD_DIR": str(records), "TEST_DEAD_EVERY": "7", **extra}


def fill_and_work(redis_server, redis_client, tmp_path: Path) -> dict[str, str]:
    """COUNT payloads on each stream (mailbox A / B), one worker --burst over both."""
    add_payloads(redis_client, COUNT, stream=A, mailbox="A")
    add_payloads(redis_client, COUNT, stream=B, mailbox="B")
    records = tmp_path / "records"
    records.mkdir()
    env = env_for(redis_server.url, records)
    worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", "w", "--burst", "--stream", A,
                               "--stream", B, "--handler", "tests.support.ha_handlers:flaky", "--env-file", os.devnull],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    code, err = finish(worker, timeout_s=120)
    assert code == 0, err[-2000:]
    return env


def dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "email_ingestion.worker.dlq_admin", "--env-file", os.devnull, *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def mailboxes_on(client, stream: str) -> list[str]:
    return [json.loads(fields[b"payload"])["mailbox"] for _, fields in client.xrange(stream)]


def test_dead_letters_record_their_stream_and_replay_returns_them_there(redis_server, redis_client, tmp_path):
    """Each stream's refusals land in its own DLQ, recording the stream; `email-dlq --stream A
    --stream B` lists both, and `replay --all` puts each back on the stream it came from."""
    env = fill_and_work(redis_server, redis_client, tmp_path)
    for stream, mailbox in ((A, "A"), (B, "B")):
        letters = redis_client.xrange(dlq_stream(stream, "email_ingestion_dlq"))
        assert len(letters) == 2
        assert {f[b"stream"].decode() for _, f in letters} == {stream}
        assert {json.loads(f[b"payload"])["mailbox"] for _, f in letters} == {mailbox}
    listed = json.loads(dlq(env, "--stream", A, "--stream", B, "list", "--json").stdout)
    assert sorted(row["stream"] for row in listed) == [A, A, B, B]
    stats = json.loads(dlq(env, "--stream", A, "--stream", B, "stats", "--json").stdout)
    assert [(s["stream"], s["depth"]) for s in stats] == [(A, 2), (B, 2)]
    before = {stream: len(redis_client.xrange(stream)) for stream in (A, B)}
    replayed = dlq({**env, "WORKER_STREAMS": f"{A},{B}"}, "replay", "--all", "--yes", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert sorted(r["stream"] for r in json.loads(replayed.stdout)["replayed"]) == [A, A, B, B]
    for stream, mailbox in ((A, "A"), (B, "B")):
        assert len(redis_client.xrange(stream)) == before[stream] + 2
        assert set(mailboxes_on(redis_client, stream)) == {mailbox}  # nothing crossed over
        assert redis_client.xlen(dlq_stream(stream, "email_ingestion_dlq")) == 0


def test_a_letter_goes_back_to_the_stream_it_records(redis_server, redis_client):
    """A DLQ holding a letter of another stream of the same tag (moved there at an upgrade)
    replays it to the stream it records, not to the DLQ's own."""
    letter = {"payload": json.dumps({"mailbox": "B"}), "reason": "permanent", "stream": B}
    dlq_id = redis_client.xadd(dlq_stream(A, "email_ingestion_dlq"), letter).decode()
    done = dlq(env_for(redis_server.url, Path("/nonexistent")), "--stream", A, "replay", dlq_id, "--json")
    assert json.loads(done.stdout)["replayed"][0]["stream"] == B, done.stderr
    assert redis_client.xlen(B) == 1 and not redis_client.exists(A)


def metric_samples(port: int, name: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            stream = labels.split('stream="', 1)[1].split('"', 1)[0]
            found[stream] = float(value)
    return found


def test_exporter_covers_every_stream_the_workers_read(redis_server, redis_client, tmp_path):
    """WORKER_STREAMS=A,B: the exporter's depth and DLQ depth have a sample for each stream."""
    env = fill_and_work(redis_server, redis_client, tmp_path)
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "email_ingestion", "exporter", "--port", str(port),
                                 "--env-file", os.devnull], env={**env, "WORKER_STREAMS": f"{A},{B}"}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: metric_samples(port, "email_ingestion_dlq_depth") == {A: 2.0, B: 2.0}, timeout_s=30)
        assert metric_samples(port, "email_ingestion_stream_depth") == {A: float(COUNT), B: float(COUNT)}
    finally:
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(20) == 0


def test_snapshots_cover_every_stream(redis_server, redis_client, tmp_path, monkeypatch):
    """admin/snapshot.py snapshots() over targets(): one snapshot per stream the workers read,
    each with its own DLQ and retry figures (for `email-ingest status`, issue 21)."""
    from email_ingestion.admin.common import targets
    from email_ingestion.admin.snapshot import snapshots
    from email_ingestion.common.settings import load_settings
    fill_and_work(redis_server, redis_client, tmp_path)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("WORKER_STREAMS", f"{A},{B}")
    found = snapshots(targets(load_settings(env_file=None)), 1000)
    assert list(found) == [A, B]
    assert [found[s]["dlq"]["size"] for s in (A, B)] == [2, 2]
    assert [found[s]["stream"]["length"] for s in (A, B)] == [COUNT, COUNT]
