"""One event per Gmail message (issue 20): the account's store of X-GM-MSGIDs ever emitted.

On a server that advertises X-GM-EXT-1, a message's identity is the account and its
X-GM-MSGID, whichever folder shows it: INBOX, a label's folder and All Mail all show the
same message, and only the first of them to reach the stream emits it. The store keeps,
per X-GM-MSGID, the message's labels at its last event (labels.py compares against them).

It is one set of hashes per account and stream (keys.gmail_identity), on the stream's slot,
so the check, the record and the XADD happen in one script: two folders racing on one
message give one entry. Nothing expires: an identity lives as long as the account is
followed (26 bytes a message measured at 1,000,000, scripts/gmail_identity_memory.py), so a label added years later, a
message moved back to INBOX or a label folder followed for the first time never delivers
old mail again. A mailbox's own `seen` hash (gm:<msgid>, written by versions before
issue 20) is consulted too, so upgrading re-delivers nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from email_ingestion.common.entry_fields import PAYLOAD, PRODUCER
from email_ingestion.common.keys import gmail_claims, gmail_identity
from email_ingestion.common.redis_client import redis_errors
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.producer.payloads import Emission
from email_ingestion.producer.state import StateStore
from email_ingestion.producer.state_lua import _FENCE

_SEPARATOR = "\n"  # label names are mailbox names: they never hold a line break

# KEYS: lease, stream, state, the mailbox's legacy seen hash, then per item its identity
# bucket and its claims bucket (gmail_claims.py; the claim ends with the emission).
# ARGV: fence, uidvalidity, last_uid, now_ms, since_ms, payload field, producer field,
# then per item X-GM-MSGID, payload, labels, UID. Position as in state.py's script; an item
# goes out only when no folder of the account emitted its X-GM-MSGID before, or when its UID
# is at or below `replay_until` (`email-ingest mailbox reset` asked for it again).
_EMIT = _FENCE + """
local stream, state, seen = KEYS[2], KEYS[3], KEYS[4]
local uidvalidity, last_uid = ARGV[2], tonumber(ARGV[3])
local stored = redis.call('HMGET', state, 'uidvalidity', 'last_uid', 'replay_until')
local position, replay = 0, 0
if stored[1] == uidvalidity then position, replay = tonumber(stored[2] or '0'), tonumber(stored[3] or '0') end
local added = {}
local bucket = 3
for i = 8, #ARGV, 4 do
  bucket = bucket + 2
  local msgid = ARGV[i]
  redis.call('HDEL', KEYS[bucket + 1], msgid)
  local replayed = tonumber(ARGV[i + 3]) <= replay and tonumber(ARGV[i + 3]) > position
  if replayed or (redis.call('HEXISTS', KEYS[bucket], msgid) == 0 and redis.call('HEXISTS', seen, 'gm:' .. msgid) == 0) then
    redis.call('HSET', KEYS[bucket], msgid, ARGV[i + 2])
    if ARGV[1] == '' then
      added[#added + 1] = redis.call('XADD', stream, '*', ARGV[6], ARGV[i + 1])
    else
      added[#added + 1] = redis.call('XADD', stream, '*', ARGV[6], ARGV[i + 1], ARGV[7], ARGV[1])
    end
  end
end
if last_uid > position then position = last_uid end
redis.call('HSET', state, 'uidvalidity', uidvalidity, 'last_uid', position, 'updated_at_ms', ARGV[4])
redis.call('HSETNX', state, 'since_ms', ARGV[5])
return added
"""


@dataclass(frozen=True)
class GmailFacts:
    """What Gmail says of a message before its body: identity, thread, labels, size."""

    uid: int
    msgid: str
    thrid: str | None
    labels: frozenset[str]
    size: int


def facts_of(message: FetchedMessage, own: str | None) -> GmailFacts | None:
    """`message`'s Gmail facts, with the folder's own label added; None when it has no
    X-GM-MSGID (expunged since the SEARCH)."""
    if message.gmail_msgid is None:
        return None
    labels = set(message.gmail_labels) | ({own} if own else set())
    return GmailFacts(message.uid, message.gmail_msgid, message.gmail_thrid, frozenset(labels), message.size or 0)


def encode_labels(labels: Iterable[str]) -> str:
    return _SEPARATOR.join(sorted(set(labels)))


def decode_labels(text: str | bytes | None) -> frozenset[str]:
    if not text:
        return frozenset()
    value = text.decode("utf-8") if isinstance(text, bytes) else text
    return frozenset(value.split(_SEPARATOR))


def msgid_of(emission: Emission) -> str | None:
    return emission.fingerprint[3:] if emission.fingerprint.startswith("gm:") else None


class GmailStateStore(StateStore):
    """StateStore whose emit, for Gmail messages, goes through the account's identity store."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gmail_emit = self.redis.register_script(_EMIT)

    def bucket(self, msgid: str) -> str:
        return gmail_identity(self.keys.stream, self.keys.account, msgid)

    def known(self, msgids: Sequence[str]) -> list[frozenset[str] | None]:
        """Per X-GM-MSGID: the labels stored at its last event, or None when never emitted."""
        if not msgids:
            return []
        with redis_errors("Gmail identity lookup"):
            pipe = self.redis.pipeline(transaction=False)
            for msgid in msgids:
                pipe.hget(self.bucket(msgid), msgid)
            pipe.hmget(self.keys.seen, [f"gm:{msgid}" for msgid in msgids])
            *labels, legacy = pipe.execute()
        return [decode_labels(stored) if stored is not None else frozenset() if old is not None else None
                for stored, old in zip(labels, legacy, strict=True)]

    def replay_until(self) -> int:
        """UIDs at or below this go out again whatever the identity store says (a mailbox reset)."""
        with redis_errors("state load"):
            return int(self.redis.hget(self.keys.state, "replay_until") or 0)

    def emit(self, uidvalidity: int, last_uid: int, items: Sequence[Emission], since_ms: int = 0) -> list[str]:
        msgids = [msgid_of(item) for item in items]
        if not items or None in msgids:
            return super().emit(uidvalidity, last_uid, items, since_ms)
        args: list[str | int] = [self.fence, uidvalidity, last_uid, self.clock_ms(), since_ms, PAYLOAD, PRODUCER]
        keys = [self.keys.lease, self.keys.stream, self.keys.state, self.keys.seen]
        for item, msgid in zip(items, msgids, strict=True):
            assert msgid is not None
            args.extend((msgid, item.payload, encode_labels(item.gmail_labels), item.uid))
            keys.extend((self.bucket(msgid), gmail_claims(self.keys.stream, self.keys.account, msgid)))
        with redis_errors("stream append"):
            added = self._gmail_emit(keys=keys, args=args)
        self._check_fence(added)
        self.replication.wait(self.redis, self.keys.stream)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in added]
