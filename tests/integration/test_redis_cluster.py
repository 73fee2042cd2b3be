"""The pipeline on a real three-master Redis Cluster (REDIS_CLUSTER=true).

Every key a Lua script or a MULTI touches must hash to one slot, or the cluster refuses
the call (CROSSSLOT). The first test records the keys of every script call and every
pipeline while the whole pipeline runs in-process (sync, workers, retries, DLQ, reclaim,
lease renewal and release, trimming, DLQ replay) and asserts one slot each, and that every
script the code registers was exercised. The second runs it with real processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.commands.core import Script
from redis.crc import key_slot

from email_ingestion.common import redis_client
from email_ingestion.common.keys import MailboxKeys, dlq_stream
from email_ingestion.common.settings import load_settings
from email_ingestion.producer.state import StateStore
from email_ingestion.sandbox.cluster import RedisClusterSandbox
from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sample_payloads import make_payload
from email_ingestion.sandbox.tls_ca import ThrowawayCA, TopologyTls
from email_ingestion.worker.cli import build_worker, build_workers
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.dlq_admin import DlqAdmin
from tests.conftest import ROOT, producer_cmd, run_once

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
DLQ = dlq_stream(STREAM, "email_ingestion_dlq")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSandbox]:
    sandbox = RedisClusterSandbox(tmp_path_factory.mktemp("cluster")).start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def cluster_client(cluster: RedisClusterSandbox) -> Iterator[redis.cluster.RedisCluster]:
    cluster.flush()
    client = cluster.client()
    yield client
    client.close()


def cluster_env(cluster: RedisClusterSandbox, records: Path) -> dict[str, str]:
    return {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "TEST_RECORD_DIR": str(records),
            "TEST_RETRY_EVERY": "5", "TEST_DEAD_EVERY": "7", "RETRY_BASE_SECONDS": "0.05",
            "RETRY_CAP_SECONDS": "0.2", "WORKER_BLOCK_TIMEOUT_MS": "200", "WORKER_METRICS_PORT": "0",
            "HANDLER_OUTAGE_FAILURES": "0"}  # the flaky handlers fail on purpose (see tests/support/worker_env.py)


class SlotRecorder:
    """Keys of each script call and each pipeline, as (what, slots)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, set[int]]] = []
        self.registered: set[str] = set()
        self.called: set[str] = set()

    def script(self, script: Script, keys: Any) -> None:
        source = script.script if isinstance(script.script, str) else script.script.decode()
        self.called.add(source)
        self.calls.append((f"script {source.strip().splitlines()[0][:60]}", {key_slot(_b(k)) for k in keys or []}))

    def pipeline(self, commands: list[tuple[Any, ...]]) -> None:
        slots = {key_slot(_b(key)) for args in commands for key in _keys_of(args)}
        self.calls.append((f"pipeline {[str(a[0]) for a in commands][:6]}", slots))


def _b(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def _keys_of(args: tuple[Any, ...]) -> list[Any]:
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        return list(args[3:3 + int(args[2])])
    if name == "WAIT":
        return []
    if name in ("XREAD", "XREADGROUP"):  # ... STREAMS key [key ...] id [id ...]
        streams = [_b(a).upper() for a in args].index(b"STREAMS") + 1
        return list(args[streams:streams + (len(args) - streams) // 2])
    return [args[1]]  # every other command this project pipelines takes one key first


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> SlotRecorder:
    rec = SlotRecorder()
    original_call, original_register = Script.__call__, redis_client._ClusterClient.register_script
    original_pipeline = redis_client._ClusterClient.pipeline

    def call(self: Script, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        rec.script(self, keys)
        return original_call(self, keys=keys, args=args, client=client)

    def register(self: Any, script: Any) -> Any:
        rec.registered.add(script if isinstance(script, str) else script.decode())
        return original_register(self, script)

    def pipeline(self: Any, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = original_pipeline(self, transaction, shard_hint)
        queued: list[tuple[Any, ...]] = []
        send, run = pipe.execute_command, pipe.execute

        def execute_command(*args: Any, **kwargs: Any) -> Any:
            queued.append(args)
            return send(*args, **kwargs)

        def execute(*args: Any, **kwargs: Any) -> Any:
            rec.pipeline(list(queued))
            queued.clear()
            return run(*args, **kwargs)

        pipe.execute_command, pipe.execute = execute_command, execute
        return pipe

    monkeypatch.setattr(Script, "__call__", call)
    monkeypatch.setattr(redis_client._ClusterClient, "register_script", register)
    monkeypatch.setattr(redis_client._ClusterClient, "pipeline", pipeline)
    return rec


def recorded(records: Path) -> Counter[int]:
    counts: Counter[int] = Counter()
    for path in records.glob("*.txt"):
        counts.update(int(line) for line in path.read_text().split())
    return counts


def test_every_script_and_pipeline_stays_on_one_slot(cluster, cluster_client, recorder, make_settings, mailbox,
                                                      tmp_path, monkeypatch):
    """Sync, re-sync, retries, DLQ, reclaim, lease renewal and release, trimming and DLQ replay on a
    real cluster: each script call and each pipeline touches keys of one slot only, and
    every script the code registers is among those exercised."""
    records = tmp_path / "records"
    records.mkdir()
    env = {**cluster_env(cluster, records), "TEST_SLOW_FIRST_S": "0.3", "LEASE_MS": "300",
           "CLAIM_MIN_IDLE_MS": "0", "REDIS_MAX_STREAM_LENGTH": "5"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    mailbox.append(*[sample_message(i) for i in range(30)])
    settings = make_settings(**env, WORKER_HANDLER="tests.support.ha_handlers:flaky")
    assert run_once(settings) == 0
    cluster_client.xgroup_create(STREAM, GROUP, id="0")
    assert cluster_client.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"}, count=3)  # left pending: reclaimed
    worker = build_worker(settings, "w1", threading.Event())
    worker.run(burst=True)
    assert worker.stats.reclaimed == 3
    release_a_lease_unhandled(worker, cluster_client)
    take_over_a_dead_holders_lease(worker, cluster_client)
    mailbox.append(sample_message(30))
    # A stored UIDVALIDITY the server no longer has: the next pass re-syncs by fingerprint.
    state_key = MailboxKeys(STREAM, settings.imap.user, settings.imap.mailbox).state
    cluster_client.hset(state_key, "uidvalidity", 1)
    assert run_once(settings) == 0  # the stream now holds more acknowledged entries than 5: trimmed
    assert cluster_client.xlen(STREAM) <= 6
    admin = DlqAdmin(redis_client.make_redis(settings.redis), STREAM, DLQ)
    assert admin.replay([entry["id"] for entry in admin.entries()])
    fleet_keys = {key_slot(key.encode()) for key in run_ownership_rounds(settings, cluster_client)}
    # A first run's baseline (INITIAL_SYNC=new) and a `mailbox reset`, on another mailbox.
    other = StateStore(client=cluster_client, keys=MailboxKeys(STREAM, settings.imap.user, "other"))
    other.start(5, position=2, since_ms=1, baseline_until=2)
    assert other.record_baseline(5, ["c:one", "c:two"], 2)
    cluster_client.hdel(other.keys.state, "baseline_until")  # as a version before baselines left it
    assert other.load().baseline_pending
    assert other.rewind(0) == 2
    exercise_gmail_scripts(cluster_client)
    assert recorder.calls
    crossing = [(what, slots) for what, slots in recorder.calls if len(slots) > 1]
    assert not crossing, crossing
    # The producers' registry and the mailboxes they offer are keys of their own (they name no
    # stream); everything else is the stream's.
    assert {s for what, slots in recorder.calls for s in slots} - fleet_keys == {key_slot(STREAM.encode())}
    assert recorder.registered <= recorder.called, [s[:60] for s in recorder.registered - recorder.called]


def exercise_gmail_scripts(client: Any) -> None:
    """Gmail's identity emit, claims and download budget (no Gmail-like server on the cluster:
    called directly, with the stream's keys)."""
    from email_ingestion.producer.download_budget import DownloadBudget
    from email_ingestion.producer.gmail_claims import Claims
    from email_ingestion.producer.gmail_identity import GmailStateStore
    from email_ingestion.producer.payloads import Emission
    store = GmailStateStore(client=client, keys=MailboxKeys(STREAM, "g@example.com", "[Gmail]/All Mail"))
    store.start(9, position=0, since_ms=1, baseline_until=0)
    claims = Claims(store=store)
    assert claims.claim(["1001", "1002"])
    assert claims.held(["1001"]) == [True]
    claims.release(["1002"])
    assert store.emit(9, 1, [Emission(fingerprint="gm:1001", uid=1, payload="{}", gmail_labels=("\\Inbox",))])
    DownloadBudget(client=client, stream=STREAM, account="g@example.com", limit_bytes=10_000_000,
                   wait=lambda _s: True).spend(1000)


def run_ownership_rounds(settings: Any, client: Any) -> list[str]:
    """The long-running producer for a few ownership rounds (register, acquire, renew, release);
    the fleet's own keys."""
    from email_ingestion.common.keys import offered_key, producers_key
    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_fleet
    from email_ingestion.producer.mailboxes import fleet_name, load_mailboxes
    mailboxes = load_mailboxes(settings)
    stop = threading.Event()
    fleet = build_fleet(dataclasses.replace(settings, producer=settings.producer.model_copy(
        update={"producer_lease_ms": 600, "producer_metrics_port": 0})), mailboxes, stop, Redactor([]))
    runner = threading.Thread(target=fleet.run)
    runner.start()
    lease = MailboxKeys(STREAM, settings.imap.user, settings.imap.mailbox).lease
    deadline = time.monotonic() + 20
    while not client.get(lease) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few renewals
    stop.set()
    runner.join(30)
    assert not runner.is_alive() and client.get(lease) is None  # given back at the end
    # What a fleet does less often: adopt earlier keys, mark a mailbox it cannot serve, offer it.
    keys = mailboxes[0].keys
    fleet.ownership.adopt(keys, [dataclasses.replace(keys, layout=1)])
    fleet.ownership.avoid(keys, live=[], mark_ms=1000)
    fleet.ownership.offer(mailboxes[0].key)
    return [producers_key(fleet_name(mailboxes)), offered_key(fleet_name(mailboxes))]


def take_over_a_dead_holders_lease(worker: Any, client: Any) -> None:
    """A lease held by a consumer without a heartbeat is taken over (the take script)."""
    idempotency = worker.processor.idempotency
    client.set(idempotency.keys.idempotency("k-dead"), "lease:gone:1-0", px=60_000)
    assert idempotency.acquire([("k-dead", "lease:w1:2-0")])[0].name == "ACQUIRED"


def release_a_lease_unhandled(worker: Any, client: Any) -> None:
    """A shutdown that runs out of time gives leases back (the release script)."""
    client.xadd(STREAM, {"payload": make_payload(999).to_json()})
    entries = client.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=1)[0][1]
    deliveries = [Delivery.from_redis(entry_id, fields) for entry_id, fields in entries]
    result = worker.processor.process(deliveries, out_of_time=lambda: True)
    assert result.unfinished == 1


@pytest.mark.slow
def test_pipeline_with_real_processes_on_the_cluster(cluster, cluster_client, producer_env, mailbox, tmp_path):
    """producer --once against Dovecot and two workers --burst against the cluster: every
    message is handled once or dead-lettered, retries come back, nothing stays pending;
    the backup script saves each primary."""
    records = tmp_path / "records"
    records.mkdir()
    env = {**producer_env, **cluster_env(cluster, records)}
    total = 60
    mailbox.append(*[sample_message(i) for i in range(total)])
    producer = subprocess.run(producer_cmd("--once"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert producer.returncode == 0, producer.stderr[-2000:]
    assert cluster_client.xlen(STREAM) == total
    workers = [subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", f"w{i}", "--burst",
                                 "--handler", "tests.support.ha_handlers:flaky"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
    uids = [p["uid"] for p in map(_payload, cluster_client.xrange(STREAM))]
    dead = {uid for uid in uids if uid % 7 == 0}
    counts = recorded(records)
    assert set(counts) == set(uids) - dead and set(counts.values()) == {1}
    assert cluster_client.xlen(DLQ) == len(dead)
    assert cluster_client.xpending(STREAM, GROUP)["pending"] == 0
    backups = tmp_path / "backups"
    backup = subprocess.run([sys.executable, "scripts/backup.py", "--output-dir", str(backups)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert backup.returncode == 0, backup.stderr[-2000:]
    assert len(list(backups.glob("*/*.rdb"))) == 3  # one per primary
    assert os.environ.get("REDIS_CLUSTER") is None  # the test left the parent's environment alone


def test_cluster_over_tls(tmp_path, producer_env, mailbox):
    """A cluster whose nodes speak TLS to clients and on the bus: producer --once and a
    worker --burst reach every node over TLS (rediss://, REDIS_CA_FILE, client certificate)."""
    ca = ThrowawayCA(tmp_path / "ca")
    cert = ca.issue("node")
    sandbox = RedisClusterSandbox(tmp_path / "cluster-tls", tls=TopologyTls(ca, cert)).start()
    try:
        records = tmp_path / "records"
        records.mkdir()
        env = {**producer_env, **cluster_env(sandbox, records), "REDIS_CA_FILE": str(ca.cert_file),
               "REDIS_CERT_FILE": str(cert.cert_file), "REDIS_KEY_FILE": str(cert.key_file)}
        mailbox.append(*[sample_message(i) for i in range(6)])
        for cmd in (producer_cmd("--once"), [sys.executable, str(ROOT / "worker.py"), "--consumer", "w1", "--burst",
                                             "--handler", "tests.support.ha_handlers:flaky"]):
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
            assert proc.returncode == 0, proc.stderr[-2000:]
        assert set(recorded(records)) == set(range(1, 7))  # uid 5 after a retry
        assert env["REDIS_URL"].startswith("rediss://")
    finally:
        sandbox.stop()


def _payload(entry: Any) -> dict[str, Any]:
    import json
    return dict(json.loads(entry[1][b"payload"]))


# Two streams whose hash tags put them on different masters (slots 2566 and 10820 of 0-16383).
STREAM_C, STREAM_D = "{mail-c}stream", "{mail-a}stream"


def fill_two_streams(client: Any) -> dict[str, list[int]]:
    """20 payloads on each stream, uids 1-20 and 101-120; returns the uids by stream."""
    uids = {STREAM_C: list(range(1, 21)), STREAM_D: list(range(101, 121))}
    for stream, wanted in uids.items():
        for uid in wanted:
            client.xadd(stream, {"payload": make_payload(uid).to_json()})
    return uids


def assert_two_streams_done(client: Any, records: Path, uids: dict[str, list[int]]) -> None:
    """Every uid handled once but multiples of 7 (the DLQ of their own stream); nothing pending."""
    counts = recorded(records)
    assert set(counts) == {uid for wanted in uids.values() for uid in wanted if uid % 7} and set(counts.values()) == {1}
    for stream, wanted in uids.items():
        dead = sorted(_payload(entry)["uid"] for entry in client.xrange(dlq_stream(stream, "email_ingestion_dlq")))
        assert dead == [uid for uid in wanted if uid % 7 == 0]
        assert client.xpending(stream, GROUP)["pending"] == 0


def test_one_worker_reads_two_streams_on_different_masters(cluster, cluster_client, recorder, tmp_path,
                                                            monkeypatch):
    """WORKER_STREAMS with two streams on different masters, in process: retries, DLQ and the
    reclaim of a dead consumer's entries work on each stream, and no script or pipeline
    touches more than one slot (one XREADGROUP over both would be CROSSSLOT)."""
    assert cluster_client.get_node_from_key(STREAM_C) != cluster_client.get_node_from_key(STREAM_D)
    records = tmp_path / "records"
    records.mkdir()
    env = {**cluster_env(cluster, records), "WORKER_STREAMS": f"{STREAM_C},{STREAM_D}",
           "WORKER_HANDLER": "tests.support.ha_handlers:flaky", "CLAIM_MIN_IDLE_MS": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    uids = fill_two_streams(cluster_client)
    for stream in uids:
        cluster_client.xgroup_create(stream, GROUP, id="0")
        assert cluster_client.xreadgroup(GROUP, "dead-consumer", {stream: ">"}, count=2)  # left pending: reclaimed
    workers = build_workers(load_settings(env_file=None), "w1", threading.Event())
    assert workers.run(burst=True) == 0
    assert [loop.stats.reclaimed for loop in workers.loops] == [2, 2]
    assert_two_streams_done(cluster_client, records, uids)
    crossing = [(what, slots) for what, slots in recorder.calls if len(slots) > 1]
    assert not crossing, crossing
    assert {s for _, slots in recorder.calls for s in slots} == {key_slot(STREAM_C.encode()), key_slot(STREAM_D.encode())}


@pytest.mark.slow
def test_two_stream_worker_process_on_the_cluster(cluster, cluster_client, tmp_path):
    """`python worker.py --stream c --stream d --burst` on the cluster handles both streams."""
    records = tmp_path / "records"
    records.mkdir()
    uids = fill_two_streams(cluster_client)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKER_"))},
           **cluster_env(cluster, records)}
    log = tmp_path / "worker.log"
    with open(log, "wb") as err:
        proc = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "w1", "--burst",
                               "--stream", STREAM_C, "--stream", STREAM_D,
                               "--handler", "tests.support.ha_handlers:flaky"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert_two_streams_done(cluster_client, records, uids)


@pytest.mark.parametrize("streams", [("{mail}alice", "{mail}bob"), ("{mail-a}x", "{mail-c}x")],
                         ids=["same-tag-one-slot", "different-masters"])
def test_streams_sharing_a_tag_stay_apart_on_the_cluster(streams, cluster, cluster_client, tmp_path):
    """Issue 19 item 1 on the cluster: streams on one slot (shared tag) or on two masters, equal
    entry ids, every first attempt failing: each message handled once by its own stream's worker."""
    from tests.integration.test_shared_tag_streams import COUNT, fill_same_ids, run_one_worker_per_stream
    expected = fill_same_ids(cluster_client, streams, COUNT)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKER_"))},
           **cluster_env(cluster, tmp_path), "MAX_RETRIES": "3", "CLAIM_MIN_IDLE_MS": "500",
           "HEARTBEAT_TTL_MS": "1000", "LEASE_MS": "2000"}
    handled = run_one_worker_per_stream(env, streams, tmp_path)
    every = [key for keys in handled.values() for key in keys]
    assert sorted(every) == sorted(expected)  # none lost, none repeated
    for index, stream in enumerate(streams):
        assert {k.split(":")[2] for k in handled[stream]} == {f"M{index}"}
        assert cluster_client.xpending(stream, GROUP)["pending"] == 0


def test_operator_commands_on_the_cluster(cluster, cluster_client, tmp_path):
    """`email-ingest status --json` and `email-dlq list/show/replay/stats` over two streams on
    different masters: the figures and the moves are right on a cluster."""
    dlq_c, dlq_d = dlq_stream(STREAM_C, "email_ingestion_dlq"), dlq_stream(STREAM_D, "email_ingestion_dlq")
    letter = cluster_client.xadd(dlq_c, {"payload": json.dumps({"uid": 1, "message_id": "<c1@x>"}),
                                         "reason": "permanent", "original_id": "7-0", "stream": STREAM_C}).decode()
    # An id of its own: ids are per stream, and two letters written in the same millisecond to two
    # DLQs get the same one, which `replay <id>` then rightly refuses as ambiguous (seen once).
    cluster_client.xadd(dlq_d, {"payload": "{}", "reason": "max_retries", "stream": STREAM_D}, id="1-1")
    cluster_client.xadd(STREAM_D, {"payload": "{}"})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKER_"))},
           "REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "WORKER_STREAMS": f"{STREAM_C},{STREAM_D}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_ingestion", *args, "--env-file", "/dev/null"], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    status = run("status", "--json")
    snap = json.loads(status.stdout)
    assert {s["dlq"]["name"]: s["dlq"]["size"] for s in snap["streams"]} == {dlq_c: 1, dlq_d: 1}, status.stderr
    assert [s["stream"]["rate"]["appended_last_minute"] for s in snap["streams"]] == [0, 1]
    assert "<c1@x>" in run("dlq", "list").stdout and "reason: permanent" in run("dlq", "show", "7-0").stdout
    assert run("dlq", "replay", letter).returncode == 0
    assert cluster_client.xlen(dlq_c) == 0 and cluster_client.xlen(STREAM_C) == 1
    assert "1 dead letters (max_retries 1)" in run("dlq", "stats").stdout
