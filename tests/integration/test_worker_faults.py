"""Issue 10: the worker's paths to loss, stalls, repeated effects and a bypassed poison limit,
each tried with a real redis-server, real worker processes and, for lost replies, a TCP
proxy that drops one reply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.common.clock import wall_ms
from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.redis_client import make_redis
from email_ingestion.common.settings import RedisSettings, load_settings
from email_ingestion.sandbox.redis_server import RedisServer
from email_ingestion.sandbox.sample_payloads import add_payloads, make_payload
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from email_ingestion.worker.cli import build_worker
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.idempotency import Idempotency, lease_value
from email_ingestion.worker.lease_keeper import LeaseKeeper
from email_ingestion.worker.recovery import Recovery
from tests.conftest import ROOT
from tests.support.waits import finish, wait_until

pytestmark = pytest.mark.slow

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
KEYS = StreamKeys(STREAM, GROUP)


@pytest.fixture
def env(redis_server, redis_client, tmp_path):
    records, markers = tmp_path / "records", tmp_path / "markers"
    records.mkdir()
    markers.mkdir()
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKER_"))},
            "REDIS_URL": redis_server.url, "WORKER_BLOCK_TIMEOUT_MS": "300", "WORKER_METRICS_PORT": "0",
            "LOG_FORMAT": "json", "TEST_RECORD_DIR": str(records), "TEST_MARKER_DIR": str(markers),
            "CLAIM_MIN_IDLE_MS": "500", "HEARTBEAT_TTL_MS": "1000", "LEASE_MS": "2000",
            "RETRY_BASE_SECONDS": "0.1", "RETRY_CAP_SECONDS": "0.2"}


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, persisting every write (it is restarted)."""
    server = RedisServer(tmp_path / "own-redis", extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    yield server
    server.stop()


def start_worker(env: dict[str, str], name: str, handler: str, *extra: str,
                 stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler", handler, *extra],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True)



def recorded(env: dict[str, str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in Path(env["TEST_RECORD_DIR"]).glob("*.txt"):
        counts.update(path.read_text().split())
    return counts


def key(uid: int) -> str:
    return make_payload(uid).idempotency_key


# --- loss -------------------------------------------------------------------------------

def test_rescuer_keeps_an_entry_whose_claim_reply_was_lost(redis_server, redis_client):
    """Item 1: the XCLAIM reply is lost and redis-py retries it; the retry returns nothing
    (the entry is now ours, idle 0). The entry must stay pending, not be acknowledged."""
    [entry_id] = add_payloads(redis_client, 1)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"})
    redis_client.xclaim(STREAM, GROUP, "dead", 0, [entry_id], idle=60_000)
    proxy = TcpProxy(redis_server.port).start()
    try:
        client = make_redis(RedisSettings(url=f"redis://127.0.0.1:{proxy.port}/0"))
        rescuer = Recovery(client, keys=KEYS, consumer="rescuer", claim_min_idle_ms=30_000,
                           hard_limit_ms=3_600_000, heartbeat_ttl_ms=1000)
        proxy.drop_next_reply(b"payload")
        reclaimed = rescuer.reclaim()
    finally:
        proxy.stop()
    assert proxy.replies_dropped == 1 and reclaimed.deleted == 0
    [pending] = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert pending["consumer"] == b"rescuer", "the entry must stay pending on the consumer that claimed it"


def test_entry_deleted_while_pending_is_still_cleaned_up(redis_client):
    """Item 1's other half: an entry that is really gone from the stream is acknowledged."""
    ids = add_payloads(redis_client, 2)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"})
    redis_client.xdel(STREAM, ids[0])
    rescuer = Recovery(redis_client, keys=KEYS, consumer="rescuer", claim_min_idle_ms=0,
                       hard_limit_ms=3_600_000, heartbeat_ttl_ms=1000)
    assert len(rescuer.reclaim().deliveries) == 1
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 1


# --- poison control -----------------------------------------------------------------------

def test_poison_reaches_the_dlq_though_each_restart_has_a_new_name(env, redis_client):
    """Item 3: a message that kills its worker, restarted under a new name each time (the
    default hostname-pid) while the dead worker's lease still lives, reaches MAX_DELIVERIES
    and the DLQ; its innocent batch-mates do not (a dead holder's lease is taken over, not
    deferred into a new entry read together with the poison again)."""
    add_payloads(redis_client, 3)
    poison = {**env, "TEST_POISON_UID": "1", "MAX_DELIVERIES": "3", "LEASE_MS": "4000"}
    exits = []
    for run in range(8):  # a supervisor restarting the crashed worker (bounded)
        previous = f"victim{run - 1}"
        assert wait_until(lambda p=previous: not redis_client.exists(KEYS.heartbeat(p)), 10)
        code, _ = finish(start_worker(poison, f"victim{run}", "tests.support.handlers:poison", "--burst"), 60)
        exits.append(code)
        if code == 0 and redis_client.xlen(DLQ):
            break
    dead = [json.loads(f[b"payload"])["uid"] for _, f in redis_client.xrange(DLQ)]
    assert dead == [1], exits
    assert redis_client.xrange(DLQ)[0][1][b"reason"] == b"max_deliveries"
    assert set(recorded(env)) == {key(0), key(2)}
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_deferral_carries_the_delivery_count_into_the_new_entry(redis_server, redis_client, monkeypatch):
    """Item 3: a message deferred because a live worker holds its lease comes back as a new
    entry (Redis counter 1) that still carries its deliveries; one more crash then takes it
    past MAX_DELIVERIES to the DLQ."""
    for name, value in {"REDIS_URL": redis_server.url, "WORKER_METRICS_PORT": "0", "MAX_DELIVERIES": "3",
                        "WORKER_BLOCK_TIMEOUT_MS": "200"}.items():
        monkeypatch.setenv(name, value)
    [entry_id] = add_payloads(redis_client, 1)
    redis_client.set(KEYS.idempotency(key(0)), "lease:holder:9-9", px=60_000)
    redis_client.set(KEYS.heartbeat("holder"), "1", px=60_000)
    worker = build_worker(load_settings(env_file=None), "w", threading.Event())
    worker.ensure_group()
    [first] = worker._read(None)
    three_times = Delivery.from_redis(entry_id, first.raw, 3)  # as if claimed after two crashes
    assert worker.processor.process([three_times]).deferred == 1
    worker.retries.move_due(ahead_ms=3_600_000)
    [again] = worker._read(None)
    assert again.deliveries == 1 and again.delivered == 3
    redis_client.xclaim(STREAM, GROUP, "w", 0, [again.entry_id])  # one more crash: counter 2
    assert worker.processor.process([Delivery.from_redis(again.entry_id, again.raw, 2)]).dead_lettered == 1
    [(_, letter)] = redis_client.xrange(DLQ)
    assert letter[b"reason"] == b"max_deliveries"


def test_hung_handler_times_out_frees_its_batch_and_ends_in_the_dlq(env, redis_client):
    """Item 4: a handler call that never returns fails with reason timeout after
    HANDLER_TIMEOUT_SECONDS (retry, then DLQ); its batch-mates are handled; the hung
    worker keeps neither its leases nor its heartbeat (it exits for its supervisor)."""
    add_payloads(redis_client, 4)
    hung = {**env, "TEST_HANG_UID": "1", "HANDLER_TIMEOUT_SECONDS": "1", "MAX_RETRIES": "1"}
    exits = []
    for _ in range(5):  # the supervisor restarts it under the same name (systemd instance)
        code, _ = finish(start_worker(hung, "w", "tests.support.handlers:hang", "--burst"), 60)
        exits.append(code)
        assert not redis_client.exists(KEYS.heartbeat("w"))
        assert not redis_client.exists(KEYS.idempotency(key(1))), "a hung call must not keep its lease"
        if code == 0:
            break
    assert exits == [1, 1, 0]
    [(_, letter)] = redis_client.xrange(DLQ)
    assert letter[b"reason"] == b"timeout" and json.loads(letter[b"payload"])["uid"] == 1
    assert letter[b"error_type"] == b"HandlerTimeoutError"
    assert recorded(env) == Counter({key(0): 1, key(2): 1, key(3): 1})
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_no_heartbeat_after_stop_beating_though_the_lease_keeper_renews(redis_client):
    """Item 4's race: the hung batch's lease keeper keeps renewing while the timeout path
    deletes the heartbeat; a renewal that comes after the DEL must not bring it back (it
    did, a TTL of false life that the hung-handler test caught under load)."""
    idem = Idempotency(redis_client, keys=KEYS, lease_ms=60_000, ttl_s=60)
    recovery = Recovery(redis_client, keys=KEYS, consumer="w", claim_min_idle_ms=500, hard_limit_ms=3_600_000,
                        heartbeat_ttl_ms=60_000)
    item = ("k1", lease_value("w", "1-1"))
    idem.acquire([item])
    keeper = LeaseKeeper(idem, items=[item], entry_ids=["1-1"], heartbeat=recovery.beat, touch=recovery.touch,
                         interval_s=0.001, confirmed_at=0.0, fresh_s=1.0)
    with keeper:
        assert wait_until(lambda: redis_client.exists(KEYS.heartbeat("w")), 30)
        recovery.stop_beating()
        renewed_since = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        # Several more renewals after the DEL, each followed by its heartbeat call.
        assert wait_until(lambda: redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] >= renewed_since + 5,
                          30)
    assert not redis_client.exists(KEYS.heartbeat("w"))


# --- stalls and stolen work ------------------------------------------------------------------

def test_heartbeat_outlives_a_long_handler_with_the_default_lease(env, redis_client):
    """Item 5: with the default LEASE_MS (60 s) and a 1 s heartbeat, a healthy worker busy
    in a 3 s handler never looks dead (renewal follows the shortest TTL)."""
    add_payloads(redis_client, 1)
    slow = {k: v for k, v in env.items() if k != "LEASE_MS"} | {"TEST_HANDLER_DELAY_S": "3"}
    worker = start_worker(slow, "busy", "tests.support.handlers:marked_record")
    try:
        assert wait_until(lambda: any(Path(env["TEST_MARKER_DIR"]).iterdir()), 30)
        missing = 0
        while not recorded(env):
            missing += not redis_client.exists(KEYS.heartbeat("busy"))
            threading.Event().wait(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        finish(worker, 30)
    assert missing == 0


@pytest.mark.parametrize(("variable", "value"), [("WORKER_BLOCK_TIMEOUT_MS", "6000"),
                                                 ("CLAIM_HARD_LIMIT_MS", "200000")])
def test_inconsistent_timings_are_refused_at_start(env, variable, value):
    """Item 5: settings whose ratios break (against the defaults) exit 2 with one line."""
    defaults = {k: v for k, v in env.items() if k not in ("HEARTBEAT_TTL_MS", "LEASE_MS", "CLAIM_MIN_IDLE_MS",
                                                         "WORKER_BLOCK_TIMEOUT_MS")}
    code, err = finish(start_worker({**defaults, variable: value}, "w", "noop", "--burst"), 30)
    assert code == 2 and variable in err and len(err.strip().splitlines()) == 1, err


def test_default_settings_burst_drains_and_exits(env, redis_client):
    """Defaults pass the timing checks, and a burst ends once nothing is pending."""
    add_payloads(redis_client, 50)
    defaults = {k: v for k, v in env.items() if k not in ("HEARTBEAT_TTL_MS", "LEASE_MS", "CLAIM_MIN_IDLE_MS",
                                                         "WORKER_BLOCK_TIMEOUT_MS", "RETRY_BASE_SECONDS",
                                                         "RETRY_CAP_SECONDS")}
    code, err = finish(start_worker(defaults, "w", "tests.support.handlers:record", "--burst"), 60)
    assert code == 0, err[-2000:]
    assert len(recorded(env)) == 50 and redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_lost_xreadgroup_reply_is_re_read_by_the_live_worker(env, redis_server, redis_client):
    """Item 6: the reply of the XREADGROUP that delivered the whole backlog is lost; the
    entries sit in the live worker's own PEL. It re-reads them once idle past
    CLAIM_MIN_IDLE_MS (not only at start, not after the 1 h hard limit)."""
    add_payloads(redis_client, 20)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    proxy = TcpProxy(redis_server.port).start()
    try:
        proxy.drop_next_reply(b"payload")
        via_proxy = {**env, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        code, err = finish(start_worker(via_proxy, "w", "tests.support.handlers:record", "--burst"), 60)
    finally:
        proxy.stop()
    assert code == 0, err[-2000:]
    assert proxy.replies_dropped == 1
    assert recorded(env) == Counter({key(uid): 1 for uid in range(20)})
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_orphans_behind_a_slow_consumers_many_idle_entries_are_found(redis_client):
    """Item 7: a live consumer holds 150 idle entries with lower ids; a dead one's 5 orphans
    behind them are still found (the whole PEL is walked, per dead consumer)."""
    add_payloads(redis_client, 155)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "slow", {STREAM: ">"}, count=150)
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=5)
    redis_client.set(KEYS.heartbeat("slow"), "1", px=60_000)
    rescuer = Recovery(redis_client, keys=KEYS, consumer="rescuer", claim_min_idle_ms=0,
                       hard_limit_ms=3_600_000, heartbeat_ttl_ms=1000)
    assert len(rescuer.reclaim(limit=10).deliveries) == 5
    owners = Counter(p["consumer"] for p in redis_client.xpending_range(STREAM, GROUP, "-", "+", 200))
    assert owners == {b"slow": 150, b"rescuer": 5}


def test_reacquired_own_lease_gets_a_full_lease_time(redis_client):
    """Item 8: a lease already ours (our previous life) is taken back with a fresh TTL, so
    the renewer keeps it and no copy with the same key can run meanwhile."""
    idem = Idempotency(redis_client, keys=KEYS, lease_ms=60_000, ttl_s=60)
    item = ("k1", lease_value("w", "1-1"))
    redis_client.set(KEYS.idempotency("k1"), item[1], px=300)
    idem.acquire([item])
    assert redis_client.pttl(KEYS.idempotency("k1")) > 50_000


def test_redis_full_at_start_is_waited_out(env, own_redis, tmp_path):
    """Item 9: Redis out of memory (maxmemory, noeviction) when the worker starts: it waits
    with backoff instead of exiting, then drains once there is room."""
    client = own_redis.client()
    add_payloads(client, 5)
    client.config_set("maxmemory", 1)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        worker = start_worker({**env, "REDIS_URL": own_redis.url}, "w", "tests.support.handlers:record",
                              "--burst", stderr=log_file)
        try:
            assert wait_until(lambda: "OutOfMemoryError" in log_path.read_text(), 30)
            assert worker.poll() is None, "the worker must wait, not exit"
            client.config_set("maxmemory", 0)
            code, _ = finish(worker, 60)
        finally:
            client.config_set("maxmemory", 0)
    assert code == 0, log_path.read_text()[-2000:]
    assert len(recorded(env)) == 5 and client.xpending(STREAM, GROUP)["pending"] == 0


def test_refused_password_exits_3_with_one_line(env, own_redis):
    """Item 9: a refused password (AuthenticationError, a ConnectionError) is not retried
    forever: exit 3 and one line naming the credentials."""
    own_redis.client().config_set("requirepass", "s3cret-pass")
    code, err = finish(start_worker({**env, "REDIS_URL": own_redis.url, "LOG_FORMAT": "text"}, "w", "noop",
                                    "--burst"), 60)
    lines = [line for line in err.splitlines() if "ERROR" in line]
    assert code == 3 and len(lines) == 1 and "credentials" in lines[0], err[-2000:]
    assert "s3cret-pass" not in err


@pytest.mark.parametrize("fault", ["restart", "oom"])
def test_settlement_that_failed_is_replayed_not_handled_again(env, own_redis, tmp_path, fault):
    """Item 10: Redis restarts (or fills up) after a batch was handled but before its done
    markers and acks landed; the worker replays the settlement once Redis serves again and
    handles nothing twice."""
    client = own_redis.client()
    add_payloads(client, 10)
    faulty = {**env, "REDIS_URL": own_redis.url, "TEST_FAULT": fault, "TEST_FAULT_UID": "9",
              "TEST_REDIS_PID": str(own_redis.process.pid if own_redis.process else 0),
              "TEST_REDIS_PORT": str(own_redis.port)}
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        worker = start_worker(faulty, "w", "tests.support.handlers:fault_after", "--burst", "--batch-size", "10",
                              stderr=log_file)
        try:
            assert wait_until(lambda: "settling a batch" in log_path.read_text(), 30), log_path.read_text()
            if fault == "restart":
                own_redis.process = None
                own_redis.start()
            else:
                client.config_set("maxmemory", 0)
            code, _ = finish(worker, 60)
        finally:
            worker.kill()
    assert code == 0, log_path.read_text()[-2000:]
    assert recorded(env) == Counter({key(uid): 1 for uid in range(10)})
    assert own_redis.client().xpending(STREAM, GROUP)["pending"] == 0


def test_worker_frozen_past_its_leases_skips_what_others_handled(env, redis_client):
    """Item 11: worker A is stopped (SIGSTOP) with a batch of 5 in hand, past its leases; B
    handles all 5; A wakes and must not handle the 4 it had not started (the one in its
    handler when it froze may complete: that call was already running)."""
    add_payloads(redis_client, 5)
    slow = {**env, "TEST_HANDLER_DELAY_S": "1"}
    a = start_worker(slow, "a", "tests.support.handlers:marked_record", "--batch-size", "5")
    assert wait_until(lambda: any(Path(env["TEST_MARKER_DIR"]).iterdir()), 30)
    a.send_signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: not redis_client.exists(KEYS.heartbeat("a")), 10)
        b = start_worker({**env, "TEST_HANDLER_DELAY_S": "0"}, "b", "tests.support.handlers:record", "--burst")
        code, err = finish(b, 60)
        assert code == 0, err[-2000:]
    finally:
        a.send_signal(signal.SIGCONT)
    a.send_signal(signal.SIGTERM)  # SIGTERM finishes the batch in hand: the stale part must be skipped
    code, err = finish(a, 60)
    assert code == 0, err[-2000:]
    counts = recorded(env)
    assert all(counts[key(uid)] == 1 for uid in range(1, 5)), counts
    assert 1 <= counts[key(0)] <= 2
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_fast_clock_on_one_host_does_not_shift_due_times(redis_server, redis_client, monkeypatch):
    """Item 12: a worker whose clock runs an hour fast schedules a retry; due times are Redis
    time, so a worker with a correct clock retries it within the backoff, not an hour later."""
    for name, value in {"REDIS_URL": redis_server.url, "WORKER_BLOCK_TIMEOUT_MS": "200", "WORKER_METRICS_PORT": "0",
                        "RETRY_BASE_SECONDS": "0.2", "RETRY_CAP_SECONDS": "0.2"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(env_file=None)
    add_payloads(redis_client, 1)
    fast = build_worker(settings, "fast", threading.Event(), clock_ms=lambda: wall_ms() + 3_600_000)
    fast.processor.handler = _fail
    fast.ensure_group()
    fast.processor.process(fast._read(None))
    assert fast.retries.waiting() == 1
    handled: list[int] = []
    stop = threading.Event()
    normal = build_worker(settings, "normal", stop)
    normal.processor.handler = lambda payload, ctx: handled.append(ctx.attempt)
    timer = threading.Timer(20, stop.set)
    timer.start()
    try:
        normal.run(burst=True)
    finally:
        timer.cancel()
    assert not stop.is_set(), "the retry was not due by Redis time"
    assert handled == [2]


def _fail(payload: Any, ctx: Any) -> None:
    raise RuntimeError("fails once")
