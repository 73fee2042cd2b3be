"""The producer's Redis state on a real redis-server: atomic emit, dedup, safe trimming."""

from __future__ import annotations

import imaplib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from email_ingestion.common.errors import AuthError, ImapConnectionError, ImapProtocolError, ImapThrottledError
from email_ingestion.common.keys import MailboxKeys
from email_ingestion.imap.session import imap_errors
from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import StateStore, StreamGuard

STREAM = "email_ingestion_stream"


def items(*uids: int) -> list[Emission]:
    return [Emission(f"fp{uid}", uid, f'{{"uid": {uid}}}') for uid in uids]


@pytest.fixture
def store(redis_client):
    return StateStore(client=redis_client, keys=MailboxKeys(STREAM, "a@x.org", "INBOX"))


def test_emit_appends_and_advances_together(store, redis_client):
    """emit appends the entries and advances UIDVALIDITY and last_uid in one step."""
    assert len(store.emit(5, 3, items(1, 2, 3))) == 3
    state = store.load()
    assert (state.uidvalidity, state.last_uid) == (5, 3)
    assert redis_client.xlen(STREAM) == 3


def test_replaying_a_batch_adds_nothing(store, redis_client):
    """A batch whose reply was lost is sent again: the UID position makes it a no-op."""
    store.emit(5, 3, items(1, 2, 3))
    assert store.emit(5, 3, items(1, 2, 3)) == []
    assert store.emit(5, 4, items(3, 4)) != []
    assert redis_client.xlen(STREAM) == 4


def test_position_never_moves_backwards(store):
    """An emit with a lower last_uid leaves the saved position unchanged."""
    store.emit(5, 10, items(10))
    store.emit(5, 4, [])
    assert store.load().last_uid == 10


def test_new_uidvalidity_resets_position_and_fingerprints_dedup(store, redis_client):
    """After begin_resync every UID, below the target or above it, is skipped when its
    fingerprint was recorded in the earlier epoch; new fingerprints go out."""
    store.emit(5, 3, items(1, 2, 3))
    state = store.begin_resync(9, 3)
    assert (state.uidvalidity, state.last_uid, state.resync_until, state.resyncing, state.epoch) == (9, 0, 3, True, 1)
    added = store.emit(9, 2, [Emission("fp1", 1, "{}"), Emission("fp-new", 2, "{}")])
    assert len(added) == 1
    assert (store.load().uidvalidity, store.load().last_uid) == (9, 2)
    assert store.gated(9, ["fp1", "fp-new", "fp-other"]) == [True, False, False]
    added = store.emit(9, 5, [Emission("fp2", 3, "{}"), Emission("fp3", 4, "{}"), Emission("fp-late", 5, "{}")])
    assert len(added) == 1, "fp2 and fp3 were emitted before, also above the target (a refill)"
    assert not store.load().resyncing


def test_resync_target_survives_a_new_store(store, redis_client):
    """The re-sync target is state in Redis, not in the process: a restarted producer resumes it."""
    store.emit(5, 3, items(1, 2, 3))
    store.begin_resync(9, 100)
    store.emit(9, 2, items(1, 2))
    again = StateStore(client=redis_client, keys=store.keys).load()
    assert (again.last_uid, again.resync_until, again.resyncing) == (2, 100, True)
    assert store.emit(9, 3, items(3)) == []


def test_two_uidvalidity_changes_in_a_row_repeat_nothing(store, redis_client):
    """Mail of both earlier incarnations is skipped in the third; a repeated begin_resync
    (lost reply) starts no extra epoch."""
    store.emit(5, 2, items(1, 2))
    store.begin_resync(9, 2)
    store.emit(9, 1, [Emission("fp1", 1, "{}")])  # skipped: epoch 0
    store.emit(9, 2, [Emission("fp-v9", 2, "{}")])  # new in the second incarnation
    store.begin_resync(12, 0)
    assert store.begin_resync(12, 0).epoch == 2
    added = store.emit(12, 4, [Emission(fp, uid, "{}") for uid, fp in enumerate(("fp2", "fp-v9", "fp1", "fp-v12"), 1)])
    assert len(added) == 1
    assert redis_client.xlen(STREAM) == 4


def test_duplicates_within_one_incarnation_all_go_out(store, redis_client):
    """Within one UIDVALIDITY the position alone decides: two distinct messages sharing a
    fingerprint both go out, before and after a change."""
    assert len(store.emit(5, 2, [Emission("same", 1, "{}"), Emission("same", 2, "{}")])) == 2
    store.begin_resync(9, 0)
    assert len(store.emit(9, 2, [Emission("fresh", 1, "{}"), Emission("fresh", 2, "{}")])) == 2
    assert store.emit(9, 3, [Emission("same", 3, "{}")]) == []


def test_rewind_replays_what_a_resync_skipped_and_refuses_while_leased(store, redis_client):
    """A reset to 0 after a re-sync re-emits the copies the re-sync skipped; with a lease in
    force, or forward, it changes nothing."""
    store.emit(5, 2, items(1, 2))
    store.begin_resync(9, 2)
    assert store.emit(9, 3, items(1, 2) + [Emission("fp-new", 3, "{}")]) != []
    assert redis_client.xlen(STREAM) == 3
    redis_client.set(store.keys.lease, "p1:7", px=60_000)
    with pytest.raises(ValueError, match="a producer holds"):
        store.rewind(0)
    redis_client.delete(store.keys.lease)
    with pytest.raises(ValueError, match="only goes back"):
        store.rewind(4)
    assert store.rewind(0) == 3
    assert len(store.emit(9, 4, items(1, 2) + [Emission("fp-new", 3, "{}"), Emission("fp3", 4, "{}")])) == 4
    assert store.emit(9, 4, items(1, 2)) == []


def test_a_reset_to_zero_survives_a_uidvalidity_change(store, redis_client):
    """`reset --uid 0` means the whole folder: a change before the producer began it re-emits
    everything up to the new target; a reset to another UID ends with the old UIDs."""
    store.emit(5, 2, items(1, 2))
    store.rewind(0)
    assert store.begin_resync(9, 3).replay_until == 3
    assert len(store.emit(9, 4, items(1, 2, 3, 4))) == 4
    store.rewind(2)
    assert store.begin_resync(12, 4).replay_until == 0
    assert store.emit(12, 4, items(1, 2, 3, 4)) == []


def test_fingerprints_are_kept_compactly_up_to_the_cap(redis_client):
    """The scripts record the digest Python computes; a full bucket drops its oldest record,
    so with a cap of one per bucket the first of two same-bucket fingerprints is forgotten."""
    from email_ingestion.producer.fingerprints import BUCKETS, RECORD_BYTES, digest
    keys = MailboxKeys(STREAM, "cap@x.org", "INBOX")
    store = StateStore(client=redis_client, keys=keys, fingerprints_kept=BUCKETS)
    by_bucket: dict[int, list[str]] = {}
    for n in range(BUCKETS * 3):
        fp = f"c:{n}"
        bucket = by_bucket.setdefault(int.from_bytes(digest(fp)[:2]) >> 4, [])
        bucket.append(fp)
        if len(bucket) == 2:
            first, second = bucket
            break
    store.emit(5, 2, [Emission(first, 1, "{}"), Emission(second, 2, "{}")])
    stored = b"".join(redis_client.hvals(keys.fingerprints))
    assert stored == digest(second) + (0).to_bytes(4) and len(stored) == RECORD_BYTES
    store.begin_resync(9, 2)
    assert store.gated(9, [first, second]) == [False, True]


def test_entries_use_the_shared_payload_field_name(store, redis_client):
    from email_ingestion.common.entry_fields import PAYLOAD
    store.emit(5, 1, items(1))
    assert list(redis_client.xrange(STREAM)[0][1]) == [PAYLOAD.encode()]


def test_state_times_come_from_the_injected_clock(redis_client):
    """updated_at_ms is the store's clock, not the wall clock."""
    store = StateStore(client=redis_client, keys=MailboxKeys(STREAM, "a", "b"), clock_ms=lambda: 1234)
    store.emit(5, 1, items(1))
    assert redis_client.hget(store.keys.state, "updated_at_ms") == b"1234"


def test_script_survives_a_script_cache_flush(store, redis_client):
    """emit keeps working after SCRIPT FLUSH empties Redis's script cache."""
    store.emit(5, 1, items(1))
    redis_client.script_flush()
    store.emit(5, 2, items(2))
    assert redis_client.xlen(STREAM) == 2


def test_unacknowledged_counts_pending_and_undelivered(redis_client):
    """Counts pending plus undelivered entries (all entries without a group); full at max_unacked."""
    guard = StreamGuard(client=redis_client, stream=STREAM, max_unacked=5)
    assert guard.unacknowledged() == 0
    for i in range(4):
        redis_client.xadd(STREAM, {"payload": str(i)})
    assert guard.unacknowledged() == 4 and not guard.is_full()
    redis_client.xgroup_create(STREAM, "g", id="0")
    read = redis_client.xreadgroup("g", "c", {STREAM: ">"}, count=3)[0][1]
    redis_client.xack(STREAM, "g", read[0][0])
    assert guard.unacknowledged() == 3
    redis_client.xadd(STREAM, {"payload": "x"})
    redis_client.xadd(STREAM, {"payload": "y"})
    assert guard.unacknowledged() == 5 and guard.is_full()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(total=st.integers(5, 40), read=st.integers(0, 40), acks=st.lists(st.integers(0, 39), max_size=40))
def test_trim_never_deletes_an_unacknowledged_entry(redis_client, total, read, acks):
    """Trimming acknowledged entries never deletes one that is pending or undelivered."""
    redis_client.flushall()
    ids = [redis_client.xadd(STREAM, {"payload": str(i)}) for i in range(total)]
    redis_client.xgroup_create(STREAM, "g", id="0")
    if read:
        redis_client.xreadgroup("g", "c", {STREAM: ">"}, count=read)
    delivered = ids[:min(read, total)]
    acked = {delivered[i] for i in acks if i < len(delivered)}
    if acked:
        redis_client.xack(STREAM, "g", *acked)
    StreamGuard(client=redis_client, stream=STREAM, max_unacked=3).trim_acknowledged()
    remaining = {entry_id for entry_id, _ in redis_client.xrange(STREAM)}
    assert set(ids) - acked <= remaining


def test_no_group_means_no_trim(redis_client):
    """Without a consumer group, trimming deletes nothing."""
    for i in range(10):
        redis_client.xadd(STREAM, {"payload": str(i)})
    assert StreamGuard(client=redis_client, stream=STREAM, max_unacked=3).trim_acknowledged() == 0
    assert redis_client.xlen(STREAM) == 10


@pytest.mark.parametrize(("raised", "expected"), [
    (imaplib.IMAP4.error("[THROTTLED] Account exceeded command or bandwidth limits"), ImapThrottledError),
    (imaplib.IMAP4.error("[OVERQUOTA] Quota exceeded"), ImapThrottledError),
    (imaplib.IMAP4.abort("socket error: EOF"), ImapConnectionError),
    (TimeoutError("timed out"), ImapConnectionError),
    (imaplib.IMAP4.error("Mailbox doesn't exist: Nope"), ImapProtocolError),
])
def test_imap_error_classification(raised, expected):
    """IMAP errors map to throttled, connection or protocol errors by their text and type."""
    with pytest.raises(expected):
        with imap_errors("test"):
            raise raised


def test_login_errors():
    """A login refused for too many connections is throttling; AUTHENTICATIONFAILED is an AuthError."""
    from imapclient.exceptions import LoginError
    with pytest.raises(ImapThrottledError):
        with imap_errors("login"):
            raise LoginError("[ALERT] Too many simultaneous connections. (Failure)")
    with pytest.raises(AuthError):
        with imap_errors("login"):
            raise LoginError("[AUTHENTICATIONFAILED] Invalid credentials (Failure)")
