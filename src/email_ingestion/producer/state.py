"""The producer's Redis state: UID position per mailbox, its fingerprints, and the stream.

Entries and state move together in one Lua script (state_lua.py): the dedup check, the
XADD, the fingerprint record and the advance of `last_uid` happen atomically. A crash
before the script leaves nothing written; after it, everything. A script whose reply was
lost (connection dropped mid-call), or a second producer racing on the same mailbox, runs
the same batch again and adds nothing: within one UIDVALIDITY, a UID at or below the stored
position is already in the stream.

Fingerprints (identity.py, kept by fingerprints.py) decide only across incarnations of the
folder: a message is skipped when its fingerprint was recorded before the current
UIDVALIDITY began, whatever its UID and whenever it reappears (the re-sync of a re-created
folder, a refill after it, a second change). Within one UIDVALIDITY they are not consulted,
because two distinct messages can share them (mail re-sent by a list, test fixtures):
checking them there would silently drop the second one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.entry_fields import PAYLOAD, PRODUCER
from email_ingestion.common.errors import LeaseLostError
from email_ingestion.common.keys import MailboxKeys
from email_ingestion.common.redis_client import Replication, redis_errors
from email_ingestion.common.text import to_text
from email_ingestion.producer import state_lua
from email_ingestion.producer.fingerprints import digest, per_bucket
from email_ingestion.producer.payloads import Emission

log = logging.getLogger(__name__)

# ~12 bytes each (docs/recovery.md): 60 MB for a mailbox that reaches the cap.
DEFAULT_FINGERPRINTS_KEPT = 5_000_000
_FIELDS = ("uidvalidity", "last_uid", "since_ms", "resync_until", "epoch", "replay_until", "baseline_until",
           "baseline_at")


@dataclass(frozen=True)
class MailboxState:
    uidvalidity: int
    last_uid: int
    since_ms: int
    resync_until: int = 0  # the highest UID when the current epoch began
    epoch: int = 0  # incarnation of the folder: +1 per UIDVALIDITY change
    replay_until: int = 0  # a reset emits UIDs up to here again, fingerprints unchecked
    baseline_until: int = 0  # first-run mail whose fingerprints are recorded up to here...
    baseline_at: int = 0  # ... done up to here

    @property
    def resyncing(self) -> bool:
        return self.resync_until > self.last_uid

    @property
    def baseline_pending(self) -> bool:
        return self.baseline_at < self.baseline_until


class StateStore:
    """UID state and stream writes of one mailbox. With `fence` (our lease value), every write
    is refused with LeaseLostError once the mailbox's lease holds anything else."""

    def __init__(self, *, client: redis.Redis, keys: MailboxKeys, replication: Replication = Replication(),
                 clock_ms: Clock = wall_ms, fence: str = "", fingerprints_kept: int = DEFAULT_FINGERPRINTS_KEPT) -> None:
        self.redis = client
        self.keys = keys
        self.fence = fence
        self.replication = replication
        self.clock_ms = clock_ms
        self.per_bucket = per_bucket(fingerprints_kept)
        self._emit = client.register_script(state_lua.EMIT)
        self._gated = client.register_script(state_lua.GATED)
        self._begin_resync = client.register_script(state_lua.BEGIN_RESYNC)
        self._start = client.register_script(state_lua.START)
        self._baseline = client.register_script(state_lua.BASELINE)
        self._plan_baseline = client.register_script(state_lua.PLAN_BASELINE)
        self._rewind = client.register_script(state_lua.REWIND)

    def load(self) -> MailboxState | None:
        with redis_errors("state load"):
            values = self.redis.hmget(self.keys.state, *_FIELDS)
            if values[0] is not None and values[6] is None and int(values[2] or 0) > 0:
                # INITIAL_SYNC=new/since under a version that kept no baseline fingerprints.
                if self._plan_baseline(keys=[self.keys.state]):
                    log.info("recording the fingerprints of the first run's baseline (state of an older version)")
                values = self.redis.hmget(self.keys.state, *_FIELDS)
        if values[0] is None:
            return None
        return MailboxState(*(int(value or 0) for value in values))

    def begin_resync(self, uidvalidity: int, resync_until: int) -> MailboxState:
        """Adopt a new UIDVALIDITY: a new epoch at position 0; from now on every message whose
        fingerprint was recorded before is skipped, across restarts."""
        before = self.load()
        with redis_errors("re-sync start"):
            done = self._begin_resync(keys=[self.keys.lease, self.keys.state],
                                      args=[self.fence, uidvalidity, resync_until, self.clock_ms()])
        if done == 2:
            log.warning("UIDVALIDITY changed during a `mailbox reset --uid 0`: the whole re-created folder is "
                        "re-emitted, the messages it had re-emitted already once more",
                        extra={"replayed_to_uid": before.last_uid if before else 0})
        elif done == 3:
            log.warning("UIDVALIDITY changed before a `mailbox reset` finished: its UIDs mean nothing any more, "
                        "the rest of it is not done (reset --uid 0 to re-emit the whole folder)",
                        extra={"stopped_at_uid": before.last_uid if before else 0,
                               "replay_until_uid": before.replay_until if before else 0})
        return self._loaded(done)

    def start(self, uidvalidity: int, *, position: int, since_ms: int, baseline_until: int) -> MailboxState:
        """The first run's state when it skips mail (INITIAL_SYNC=new/since): the mail up to
        `baseline_until` is not emitted, but its fingerprints are to be recorded."""
        with redis_errors("first run"):
            done = self._start(keys=[self.keys.lease, self.keys.state],
                               args=[self.fence, uidvalidity, position, since_ms, baseline_until, self.clock_ms()])
        return self._loaded(done)

    def record_baseline(self, uidvalidity: int, fingerprints: Sequence[str], done_until: int) -> bool:
        """Record fingerprints of first-run mail, and that the baseline is done up to
        `done_until`; False when the UIDVALIDITY has moved on (nothing written)."""
        args: list[str | int | bytes] = [self.fence, uidvalidity, done_until, self.per_bucket,
                                         *(digest(fp) for fp in fingerprints)]
        with redis_errors("baseline record"):
            done = self._baseline(keys=[self.keys.lease, self.keys.state, self.keys.fingerprints], args=args)
        self._check_fence(done)
        return bool(done)

    def rewind(self, uid: int) -> int:
        """`mailbox reset`: position back to `uid`; the UIDs up to the returned one are emitted
        again without the fingerprint check. Refused (ValueError) while a producer holds the
        mailbox or when `uid` is above the position; LookupError when nothing is stored."""
        code, detail = (to_text(x) for x in self._rewind(keys=[self.keys.lease, self.keys.state], args=[uid]))
        where = f"{self.keys.account} {self.keys.mailbox} on {self.keys.stream}"
        if code == "no-state":
            raise LookupError(f"no stored position for {where}")
        if code == "leased":
            raise ValueError(f"a producer holds {where} (lease {detail.rsplit(':', 1)[0]!r}): stop it first, or wait "
                             "PRODUCER_LEASE_MS for the lease of a stopped one to expire; nothing changed")
        if code == "forward":
            raise ValueError(f"--uid {uid} is above the stored last_uid {detail}: a reset only goes back")
        return int(detail)

    def emit(self, uidvalidity: int, last_uid: int, items: Sequence[Emission], since_ms: int = 0) -> list[str]:
        """Append the new items and move the position to `last_uid`, atomically.

        Returns the stream ids of the entries added (fewer than items when some were
        already emitted, or recorded in an earlier incarnation of the folder)."""
        args: list[str | int | bytes] = [self.fence, uidvalidity, last_uid, self.clock_ms(), since_ms, PAYLOAD,
                                         PRODUCER, self.per_bucket]
        for item in items:
            args.extend((item.fingerprint, digest(item.fingerprint), item.uid, item.payload))
        keys = [self.keys.lease, self.keys.stream, self.keys.state, self.keys.fingerprints, self.keys.seen]
        with redis_errors("stream append"):
            added = self._emit(keys=keys, args=args)
        self._check_fence(added)
        self.replication.wait(self.redis, self.keys.stream)  # REDIS_WAIT_REPLICAS
        return [x.decode() if isinstance(x, bytes) else str(x) for x in added]

    def gated(self, uidvalidity: int, fingerprints: Sequence[str]) -> list[bool]:
        """Per fingerprint: recorded in an earlier incarnation of the folder (skip it)."""
        if not fingerprints:
            return []
        with redis_errors("fingerprint lookup"):
            args: list[str | int | bytes] = [uidvalidity]
            for fp in fingerprints:
                args.extend((fp, digest(fp)))
            found = self._gated(keys=[self.keys.state, self.keys.fingerprints, self.keys.seen], args=args)
        return [bool(x) for x in found]

    def _loaded(self, reply: object) -> MailboxState:
        self._check_fence(reply)
        state = self.load()
        assert state is not None
        return state

    def _check_fence(self, reply: object) -> None:
        if reply is None:  # the script's `false`: the lease is not ours
            raise LeaseLostError(f"the lease of {self.keys.account}/{self.keys.mailbox} is no longer ours; "
                                 "nothing was written")


class StreamGuard:
    """Backpressure and trimming that never lose an entry a consumer group has not acked."""

    def __init__(self, *, client: redis.Redis, stream: str, max_unacked: int) -> None:
        self.redis = client
        self.stream = stream
        self.max_unacked = max_unacked

    def unacknowledged(self) -> int:
        """Entries not yet acknowledged by the slowest group (all entries when no group)."""
        with redis_errors("stream depth check"):
            length = int(self.redis.xlen(self.stream))
            groups = self._groups()
        if not groups:
            return length
        worst = 0
        for group in groups:
            lag = group.get("lag")
            worst = max(worst, int(group.get("pending", 0)) + (length if lag is None else int(lag)))
        return min(worst, length)

    def is_full(self) -> bool:
        return self.unacknowledged() >= self.max_unacked

    def trim_acknowledged(self) -> int:
        """When the stream is longer than the limit, drop entries every group has acked."""
        with redis_errors("stream trim"):
            if int(self.redis.xlen(self.stream)) <= self.max_unacked:
                return 0
            groups = self._groups()
            if not groups:
                return 0
            ms, seq = min(self._first_unacked(group) for group in groups)
            return int(self.redis.xtrim(self.stream, minid=f"{ms}-{seq}", approximate=False))

    def _groups(self) -> list[dict[str, Any]]:
        try:
            return list(self.redis.xinfo_groups(self.stream))
        except redis.ResponseError:  # no such key yet
            return []

    def _first_unacked(self, group: dict[str, Any]) -> tuple[int, int]:
        """The oldest entry this group still needs. XINFO and XPENDING are two calls, so
        entries acked in between are fine: the answer can only be too old, never too new."""
        last = to_text(group["last-delivered-id"])
        if int(group.get("pending", 0) or 0) > 0:
            oldest = self.redis.xpending(self.stream, group["name"]).get("min")
            if oldest is not None:
                return _stream_id(to_text(oldest))
        ms, seq = _stream_id(last)
        return ms, seq + 1


def _stream_id(text: str) -> tuple[int, int]:
    # Compare ids as numbers: as strings "999-0" would sort after "1000-0".
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
