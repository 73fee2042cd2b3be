"""After a UIDVALIDITY change, on a real Dovecot and Redis with real producer processes:
mail emitted before is never emitted again, however late and in whatever steps it comes
back; no INTERNALDATE decides anything; the INITIAL_SYNC=new/since baseline is kept by
fingerprint (issue 18 items 1-3). Each test counts lost and repeated messages."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from collections import Counter

import pytest

from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.tcp_proxy import TcpProxy
from tests.conftest import producer_cmd, stream_payloads
from tests.support.waits import wait_until

BEFORE_1970 = dt.datetime(1965, 3, 1, 12, 0, tzinfo=dt.UTC)
FAR_FUTURE = dt.datetime(2099, 12, 31, 12, 0, tzinfo=dt.UTC)


def mid(index: int) -> str:
    return f"<msg-0-{index}@example.org>"


def once(env: dict[str, str], **extra: str) -> None:
    done = subprocess.run(producer_cmd("--once"), env={**env, **extra}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def lost_and_repeated(client, expected: set[int]) -> tuple[list[str], list[str]]:
    counts = Counter(p["message_id"] for p in stream_payloads(client))
    wanted = {mid(i) for i in expected}
    lost = sorted(wanted - set(counts))
    repeated = sorted(m for m, n in counts.items() if n > 1)
    unexpected = sorted(set(counts) - wanted)
    assert not unexpected, f"emitted but not expected: {unexpected[:5]}"
    return lost, repeated


def test_refill_in_steps_after_the_resync_began_repeats_nothing(mailbox, producer_env, redis_client):
    """A client copies 20 messages back in steps (5, then 15 with 3 new), a producer run
    after each step: 0 of 20 old messages again, each new one once."""
    mailbox.append(*[sample_message(i) for i in range(20)])
    once(producer_env)
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in range(5)])
    once(producer_env, BATCH_SIZE="4")
    mailbox.append(*[sample_message(i) for i in (*range(5, 12), 100, *range(12, 20), 101, 102)])
    once(producer_env, BATCH_SIZE="4")
    assert lost_and_repeated(redis_client, {*range(20), 100, 101, 102}) == ([], [])


@pytest.mark.slow
def test_folder_first_seen_empty_then_refilled_one_by_one_repeats_nothing(mailbox, producer_env, redis_client):
    """The producer sees the re-created folder empty; the mail then comes back in a batch
    and one message at a time (as IDLE brings it, checked by the emit script alone)."""
    mailbox.append(*[sample_message(i) for i in range(20)])
    once(producer_env)
    mailbox.recreate()
    once(producer_env)
    mailbox.append(*[sample_message(i) for i in range(10)])
    once(producer_env)
    for index in (*range(10, 20), 200):
        mailbox.append(sample_message(index))
        once(producer_env)
    assert lost_and_repeated(redis_client, {*range(20), 200}) == ([], [])


def test_two_uidvalidity_changes_in_a_row_repeat_nothing(mailbox, producer_env, redis_client):
    """Re-created twice, the second time before the first re-sync saw everything: mail of
    both earlier incarnations is skipped, each new message goes out once."""
    mailbox.append(*[sample_message(i) for i in range(10)])
    once(producer_env)
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in (0, 1, 2, 300)])
    once(producer_env)
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in (*range(10), 300, 301)])
    once(producer_env)
    assert lost_and_repeated(redis_client, {*range(10), 300, 301}) == ([], [])


@pytest.mark.slow
def test_resync_killed_then_refilled_resumes_without_repeats(mailbox, producer_env, redis_client, dovecot):
    """SIGKILL in the middle of a re-sync, then more old mail (and a second copy of some) and
    a new message are copied back before the next run: 0 lost, 0 repeated."""
    mailbox.append(*[sample_message(i) for i in range(300)])
    once(producer_env)
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in range(250)])
    proxy = TcpProxy(dovecot.port, delay_s=0.01).start()
    env = {**producer_env, "IMAP_PORT": str(proxy.port), "BATCH_SIZE": "10"}
    try:
        proc = subprocess.Popen(producer_cmd("--once"), env=env, stderr=subprocess.DEVNULL)
        state_key = next(iter(redis_client.scan_iter("*:state")))
        uidvalidity = str(mailbox.uidvalidity()).encode()
        midway = wait_until(lambda: redis_client.hget(state_key, "uidvalidity") == uidvalidity
                            and int(redis_client.hget(state_key, "last_uid")) >= 30, 60, 0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert midway and int(redis_client.hget(state_key, "last_uid")) < 250, "the kill must land mid-re-sync"
    finally:
        proxy.stop()
    mailbox.append(*[sample_message(i) for i in (*range(250, 300), *range(40), 400)])
    once(producer_env)
    assert lost_and_repeated(redis_client, {*range(300), 400}) == ([], [])


def test_no_internaldate_decides_delivery_in_a_resync(mailbox, producer_env, redis_client):
    """Messages dated 1965 and 2099 (INITIAL_SYNC=all): the first sync delivers them, the
    re-sync of the re-created folder delivers the new ones among them and repeats none."""
    mailbox.append(sample_message(0), msg_time=BEFORE_1970)
    mailbox.append(sample_message(1), msg_time=FAR_FUTURE)
    mailbox.append(sample_message(2))
    once(producer_env, INITIAL_SYNC="all")
    mailbox.recreate()
    for index, when in ((0, BEFORE_1970), (500, BEFORE_1970), (1, FAR_FUTURE), (501, FAR_FUTURE), (2, None)):
        mailbox.append(sample_message(index), msg_time=when)
    once(producer_env, INITIAL_SYNC="all")
    assert lost_and_repeated(redis_client, {0, 1, 2, 500, 501}) == ([], [])


def test_initial_sync_new_baseline_survives_a_recreation_without_internaldate(mailbox, producer_env, redis_client):
    """INITIAL_SYNC=new skips 6 old messages; the folder is re-created by a client that does
    not keep INTERNALDATE (copies dated now): the old mail stays skipped, new mail goes once."""
    mailbox.append(*[sample_message(i) for i in range(6)])
    once(producer_env, INITIAL_SYNC="new")
    assert redis_client.xlen("email_ingestion_stream") == 0
    mailbox.append(sample_message(600))
    once(producer_env, INITIAL_SYNC="new")
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in (*range(6), 600, 601)])
    once(producer_env, INITIAL_SYNC="new", BATCH_SIZE="3")
    assert lost_and_repeated(redis_client, {600, 601}) == ([], [])


def test_initial_sync_since_baseline_survives_a_recreation_without_internaldate(mailbox, producer_env,
                                                                                 redis_client):
    """INITIAL_SYNC=since:2024-01-01: mail of 2019 and 2023 is skipped, 2099 mail emitted;
    copies dated now (INTERNALDATE not kept) bring none of it back, a new message once.

    Not a date before 1970 here: Dovecot caches received dates as unsigned 32-bit numbers, so
    its SEARCH SINCE answers 1965 for such a message until the date is cached and 2101 after
    (seen flipping between runs); `since:` follows what the server answers (docs/producer.md)."""
    for index, when in ((0, dt.datetime(2019, 3, 1, tzinfo=dt.UTC)), (1, dt.datetime(2023, 6, 1, tzinfo=dt.UTC)),
                        (2, FAR_FUTURE)):
        mailbox.append(sample_message(index), msg_time=when)
    once(producer_env, INITIAL_SYNC="since:2024-01-01")
    assert [p["message_id"] for p in stream_payloads(redis_client)] == [mid(2)]
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in (0, 1, 2, 700)])
    once(producer_env, INITIAL_SYNC="since:2024-01-01")
    assert lost_and_repeated(redis_client, {2, 700}) == ([], [])


def test_identical_messages_follow_the_position_within_an_incarnation(mailbox, producer_env, redis_client):
    """The documented trade-off: two byte-identical messages both go out in the first sync,
    neither after a re-creation; a new identical pair arriving after the change both go out."""
    old, new = sample_message(1), sample_message(2)
    mailbox.append(old, old)
    once(producer_env)
    mailbox.recreate()
    once(producer_env)
    mailbox.append(old, old, new, new)
    once(producer_env)
    counts = Counter(p["message_id"] for p in stream_payloads(redis_client))
    assert counts == {mid(1): 2, mid(2): 2}


@pytest.mark.slow
def test_baseline_recording_killed_midway_resumes(mailbox, producer_env, redis_client, dovecot):
    """INITIAL_SYNC=new over 600 messages, SIGKILL while their fingerprints are recorded;
    the next run finishes the baseline, and a re-created copy brings none of them back."""
    mailbox.append(*[sample_message(i) for i in range(600)])
    proxy = TcpProxy(dovecot.port, delay_s=0.01).start()
    env = {**producer_env, "IMAP_PORT": str(proxy.port), "BATCH_SIZE": "10", "INITIAL_SYNC": "new"}
    try:
        proc = subprocess.Popen(producer_cmd("--once"), env=env, stderr=subprocess.DEVNULL)

        def baseline_at() -> int:
            keys = list(redis_client.scan_iter("*:state"))
            return int(redis_client.hget(keys[0], "baseline_at") or 0) if keys else 0

        midway = wait_until(lambda: baseline_at() >= 30, 60, 0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert midway and baseline_at() < 600, "the kill must land mid-baseline"
    finally:
        proxy.stop()
    once(producer_env, INITIAL_SYNC="new")
    assert baseline_at() == 600
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in (*range(600), 800)])
    once(producer_env, INITIAL_SYNC="new")
    assert lost_and_repeated(redis_client, {800}) == ([], [])


def test_state_of_an_older_version_gets_its_baseline(mailbox, producer_env, redis_client):
    """A mailbox started with INITIAL_SYNC=new by a version that kept no baseline
    fingerprints: the first pass after the upgrade records everything up to its position, so
    a re-created copy without INTERNALDATE brings none of that mail back."""
    mailbox.append(*[sample_message(i) for i in range(5)])
    once(producer_env, INITIAL_SYNC="new")
    mailbox.append(sample_message(900))
    once(producer_env, INITIAL_SYNC="new")
    state_key = next(iter(redis_client.scan_iter("*:state")))
    redis_client.delete(next(iter(redis_client.scan_iter("*:fingerprints"))))  # as an older version left it
    redis_client.hdel(state_key, "epoch", "baseline_until", "baseline_at")
    once(producer_env, INITIAL_SYNC="new")
    assert int(redis_client.hget(state_key, "baseline_at")) == 6
    mailbox.recreate()
    mailbox.append(*[sample_message(i) for i in (*range(5), 900, 901)])
    once(producer_env, INITIAL_SYNC="new")
    assert lost_and_repeated(redis_client, {900, 901}) == ([], [])


def test_a_message_without_a_header_stays_in_the_baseline(mailbox, producer_env, redis_client):
    """INITIAL_SYNC=new over a message whose first line is empty (no header; the lines after it
    are body, as Dovecot's header-only FETCH says) and two others; the folder re-created, seen
    empty, then refilled: none of them goes out, the new one once (the headless one was
    delivered: its baseline fingerprint, from the header-only FETCH, was not the one the emit
    script computes from the whole message)."""
    headless = b"\r\nMessage-ID: <headless@example.org>\r\nSubject: in the body\r\n\r\nbody\r\n"
    mailbox.append(sample_message(0), headless, sample_message(1))
    once(producer_env, INITIAL_SYNC="new")
    mailbox.recreate()
    once(producer_env, INITIAL_SYNC="new")  # seen empty: what comes back is checked as it arrives
    mailbox.append(headless)  # alone, as IDLE brings it: checked by the emit script alone
    once(producer_env, INITIAL_SYNC="new")
    mailbox.append(sample_message(0), sample_message(1), sample_message(2))
    once(producer_env, INITIAL_SYNC="new")
    assert Counter(p["message_id"] for p in stream_payloads(redis_client)) == Counter({mid(2): 1})
