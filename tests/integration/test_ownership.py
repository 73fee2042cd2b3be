"""Mailbox ownership on a real redis-server: leases, fencing tokens, the producer registry."""

from __future__ import annotations

import os
import subprocess

import pytest

from email_ingestion.common.errors import LeaseLostError
from email_ingestion.common.keys import MailboxKeys
from email_ingestion.producer.instances import Instance
from email_ingestion.producer.ownership import Ownership, fair_share
from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import StateStore
from tests.support.waits import wait_until

STREAM = "email_ingestion_stream"
KEYS = MailboxKeys(STREAM, "a@x.org", "INBOX")
# Long enough that no pause of the test process (a loaded CI machine deschedules it for
# seconds) lets a lease lapse between two calls: the tests that need a lease gone expire it
# on purpose (expire_lease) or use SHORT_LEASE_MS, and wait for Redis to drop it.
LEASE_MS = 60_000
SHORT_LEASE_MS = 400


def items(*uids: int) -> list[Emission]:
    return [Emission(f"fp{uid}", uid, f'{{"uid": {uid}}}') for uid in uids]


def owner(redis_client, producer_id: str, lease_ms: int = LEASE_MS) -> Ownership:
    return Ownership(redis_client, producer_id=producer_id, fleet="f", lease_ms=lease_ms)


def expire_lease(redis_client) -> None:
    """The holder pauses past its lease: Redis lets the lease key expire, as it would after
    LEASE_MS of silence (the wait is on the key, not on a guess at how long that takes)."""
    redis_client.pexpire(KEYS.lease, 1)
    assert wait_until(lambda: not redis_client.exists(KEYS.lease), timeout_s=30)


@pytest.fixture(autouse=True)
def _clean(redis_client):
    redis_client.flushdb()


def test_a_held_lease_is_refused_to_others_and_renewed_only_by_its_holder(redis_client):
    """While p1 holds the mailbox, p2 cannot take or renew it; p1 renews it."""
    p1, p2 = owner(redis_client, "p1"), owner(redis_client, "p2")
    lease = p1.acquire(KEYS)
    assert lease is not None and lease.startswith("p1:")
    assert p2.acquire(KEYS) is None
    assert p2.renew([(KEYS, "p2:999")]) == [False]
    redis_client.pexpire(KEYS.lease, 5_000)  # most of the lease time has gone by
    assert p2.renew([(KEYS, "p2:999")]) == [False] and redis_client.pttl(KEYS.lease) <= 5_000
    assert p1.renew([(KEYS, lease)]) == [True]
    assert redis_client.pttl(KEYS.lease) > 5_000, "a renewal gives the holder a whole lease time again"
    assert p2.acquire(KEYS) is None


def test_an_expired_lease_goes_to_the_next_producer_with_a_higher_token(redis_client):
    """Once p1's lease expires p2 takes it, with a larger fencing token; p1's renewal fails."""
    p1, p2 = owner(redis_client, "p1"), owner(redis_client, "p2")
    first = owner(redis_client, "p1", SHORT_LEASE_MS).acquire(KEYS)
    assert wait_until(lambda: not redis_client.exists(KEYS.lease), timeout_s=30)  # expires on its own
    second = p2.acquire(KEYS)
    assert first and second and int(second.rsplit(":", 1)[1]) > int(first.rsplit(":", 1)[1])
    assert p1.renew([(KEYS, first)]) == [False]


def test_a_write_with_a_stale_lease_is_refused_and_changes_nothing(redis_client):
    """The fencing check runs inside the emit script: the paused owner's batch is refused whole,
    the new owner's lands, and every entry names the lease it was written under."""
    p1, p2 = owner(redis_client, "p1"), owner(redis_client, "p2")
    old = p1.acquire(KEYS)
    assert old is not None
    stale = StateStore(client=redis_client, keys=KEYS, fence=old)
    assert len(stale.emit(5, 2, items(1, 2))) == 2
    expire_lease(redis_client)  # p1 "paused" past its lease
    new = p2.acquire(KEYS)
    assert new is not None
    with pytest.raises(LeaseLostError):
        stale.emit(5, 4, items(3, 4))
    with pytest.raises(LeaseLostError):
        stale.begin_resync(9, 4)
    assert redis_client.xlen(STREAM) == 2 and redis_client.hget(KEYS.state, "last_uid") == b"2"
    assert len(StateStore(client=redis_client, keys=KEYS, fence=new).emit(5, 4, items(3, 4))) == 2
    writers = [fields[b"producer"].decode() for _, fields in redis_client.xrange(STREAM)]
    assert writers == [old, old, new, new]


def test_an_expired_lease_nobody_took_still_fences(redis_client):
    """Expired and not yet taken: the old owner's write is refused too (it cannot know it is safe)."""
    lease = owner(redis_client, "p1").acquire(KEYS)
    expire_lease(redis_client)
    with pytest.raises(LeaseLostError):
        StateStore(client=redis_client, keys=KEYS, fence=lease or "").emit(5, 1, items(1))
    assert redis_client.xlen(STREAM) == 0


def test_the_same_producer_id_takes_its_lease_back_at_once_and_fences_its_earlier_life(redis_client):
    """A restart after SIGKILL (same PRODUCER_ID) does not wait out the lease; the earlier
    process, should it still run (it was only frozen), is refused."""
    earlier = owner(redis_client, "p1").acquire(KEYS)
    restarted = owner(redis_client, "p1").acquire(KEYS)
    assert earlier and restarted and restarted != earlier
    with pytest.raises(LeaseLostError):
        StateStore(client=redis_client, keys=KEYS, fence=earlier).emit(5, 1, items(1))


def test_once_another_process_shares_our_id_our_leases_are_not_taken_back(redis_client):
    """After a same-id process took a lease from us, leases under our id count as someone else's."""
    running = owner(redis_client, "p1").acquire(KEYS)
    mine = owner(redis_client, "p1")
    mine.take_back_own = False
    assert running and mine.acquire(KEYS) is None


def test_release_gives_the_lease_back_only_if_still_ours(redis_client):
    """Release after a takeover must not delete the new owner's lease."""
    p1, p2 = owner(redis_client, "p1"), owner(redis_client, "p2")
    old = p1.acquire(KEYS)
    expire_lease(redis_client)
    new = p2.acquire(KEYS)
    p1.release(KEYS, old or "")
    assert p1.holder(KEYS) == new
    p2.release(KEYS, new or "")
    assert p1.holder(KEYS) is None


def ids(live: list[str]) -> list[str]:
    return sorted(i.producer_id for i in map(Instance.parse, live) if i)


def test_the_registry_lists_live_producers_and_drops_silent_ones(redis_client):
    """Registrations last one lease time, on Redis's clock: p1 falls silent after a last
    announcement of SHORT_LEASE_MS and drops out; p2, announcing on, stays."""
    p1, p2 = owner(redis_client, "p1"), owner(redis_client, "p2")
    p1.register()
    assert ids(p2.register()) == ["p1", "p2"]
    p1.lease_ms = SHORT_LEASE_MS
    p1.register()
    assert wait_until(lambda: ids(p2.register()) == ["p2"], timeout_s=30)
    p2.unregister()
    assert ids(p1.register()) == ["p1"]


def test_two_live_processes_sharing_an_id_each_count_and_leave_each_other_be(redis_client):
    """Two processes with one PRODUCER_ID: both registered, so each gets a share, and neither
    takes the other's leases back as if they were an earlier life of its own."""
    first, second = owner(redis_client, "host"), owner(redis_client, "host")
    # A live pid, not ours: our parent.
    second.instance = Instance(producer_id="host", host=second.instance.host, pid=os.getppid(), nonce="other")
    held = first.acquire(KEYS)
    first.register()
    assert ids(second.register()) == ["host", "host"]
    assert held and not second.take_back_own and second.acquire(KEYS) is None


def test_an_earlier_life_on_this_host_does_not_count_as_another_process(redis_client):
    """A registration left by a SIGKILLed process of ours (its pid gone) still lets us take our leases back."""
    dead = owner(redis_client, "host")
    dead.instance = Instance(producer_id="host", host=dead.instance.host, pid=dead_pid(), nonce="dead")
    held = dead.acquire(KEYS)
    dead.register()
    restarted = owner(redis_client, "host")
    restarted.register()
    assert restarted.take_back_own
    assert (restarted.acquire(KEYS) or held) != held


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_producer_that_cannot_serve_a_mailbox_stays_away_while_another_may_try(redis_client):
    """The avoid mark: given up only when another live producer is free to try; never round in circles."""
    a, b = owner(redis_client, "a"), owner(redis_client, "b")
    a.register()
    live = b.register()
    lease = a.acquire(KEYS, live=live)
    assert lease and a.avoid(KEYS, live=live, mark_ms=60_000)  # b may try: a gives it back
    a.release(KEYS, lease)
    assert a.acquire(KEYS, live=live) is None, "a stays away while b may try"
    taken = b.acquire(KEYS, live=live)
    assert taken and not b.avoid(KEYS, live=live, mark_ms=60_000), "every live producer failed it: b keeps it"
    b.release(KEYS, taken)
    assert b.acquire(KEYS, live=live), "b was not marked"
    assert a.avoid(KEYS, live=[str(a.instance)], mark_ms=60_000) is False, "alone: keep it"


def test_fair_share_covers_every_mailbox():
    """However many producers are live, their shares add up to at least every mailbox."""
    for mailboxes in range(0, 45):
        for live in range(0, 9):
            assert fair_share(mailboxes, live) * max(1, live) >= mailboxes
            assert fair_share(mailboxes, live) <= max(1, mailboxes)
