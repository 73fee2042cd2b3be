"""Which folder of a Gmail account downloads a message no folder has emitted yet (issue 20).

INBOX, a label's folder and All Mail are synced at the same time, each on its own
connection, and all see a new message. Before downloading, a folder claims the message's
X-GM-MSGID for a while (`CLAIM_TTL_MS`); the others leave it to the claimant and note it as
deferred. Every pass looks at its deferred messages again: emitted meanwhile (the usual
case) -> forgotten; the claim expired without an emission (the claimant crashed, or the
message left its folder first) -> claimed and emitted from here. So a message is
downloaded once, and never lost to a folder that gave it up.

When the account's INBOX is followed, the other folders (All Mail, labels) also defer the
messages labelled `\\Inbox`: new mail goes out from INBOX, the folder with the lower latency
and the expected `mailbox`; another folder takes it only once it has left INBOX without
being emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from email_ingestion.common.keys import gmail_claims, gmail_identity
from email_ingestion.common.redis_client import redis_errors
from email_ingestion.producer.gmail_identity import GmailFacts, GmailStateStore

CLAIM_TTL_MS = 300_000  # longer than any batch takes to download and emit

# KEYS: per item its identity bucket and claims bucket. ARGV: claimant, ttl_ms, then the
# X-GM-MSGIDs. Answers per item: 0 emitted already, 1 claimed by us, 2 claimed by another.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 3, #ARGV do
  local identity, claims, msgid = KEYS[2 * (i - 2) - 1], KEYS[2 * (i - 2)], ARGV[i]
  if redis.call('HEXISTS', identity, msgid) == 1 then
    out[#out + 1] = 0
  else
    local held = redis.call('HGET', claims, msgid)
    local owner, expiry = nil, 0
    if held then owner, expiry = string.match(held, '^(.*)|(%d+)$') end
    if held and owner ~= ARGV[1] and tonumber(expiry) > now then
      out[#out + 1] = 2
    else
      redis.call('HSET', claims, msgid, ARGV[1] .. '|' .. (now + tonumber(ARGV[2])))
      out[#out + 1] = 1
    end
  end
end
return out
"""

# KEYS: per item its claims bucket. ARGV: claimant, then the X-GM-MSGIDs. A claim is dropped
# only while it is still this folder's (after its expiry another folder may hold it).
_RELEASE = """
for i = 2, #ARGV do
  local held = redis.call('HGET', KEYS[i - 1], ARGV[i])
  if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then redis.call('HDEL', KEYS[i - 1], ARGV[i]) end
end
return 0
"""

# KEYS: per item its claims bucket. ARGV: the X-GM-MSGIDs. Answers per item 1 when a folder
# holds an unexpired claim on it (its download is under way), else 0.
_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #ARGV do
  local held = redis.call('HGET', KEYS[i], ARGV[i])
  local expiry = held and tonumber(string.match(held, '|(%d+)$')) or 0
  out[i] = expiry > now and 1 or 0
end
return out
"""


class Claim(IntEnum):
    EMITTED = 0
    OURS = 1
    OTHERS = 2


class Claims:
    def __init__(self, *, store: GmailStateStore, ttl_ms: int = CLAIM_TTL_MS) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        self._claim = store.redis.register_script(_CLAIM)
        self._release = store.redis.register_script(_RELEASE)
        self._held = store.redis.register_script(_HELD)

    def claim(self, msgids: Sequence[str]) -> list[Claim]:
        if not msgids:
            return []
        keys = self.store.keys
        script_keys = [k for m in msgids for k in (gmail_identity(keys.stream, keys.account, m),
                                                   gmail_claims(keys.stream, keys.account, m))]
        with redis_errors("Gmail claim"):
            answers = self._claim(keys=script_keys, args=[keys.mailbox, self.ttl_ms, *msgids])
        return [Claim(int(a)) for a in answers]

    def release(self, msgids: Sequence[str]) -> None:
        """Give up this folder's claims on messages it will not emit (they left the folder
        between the prefetch and the download): a folder that deferred them takes them on
        its next pass instead of waiting for the claim to expire."""
        if not msgids:
            return
        keys = self.store.keys
        with redis_errors("Gmail claim"):
            self._release(keys=[gmail_claims(keys.stream, keys.account, m) for m in msgids],
                          args=[keys.mailbox, *msgids])

    def held(self, msgids: Sequence[str]) -> list[bool]:
        """Per X-GM-MSGID: whether some folder's claim on it is still live."""
        if not msgids:
            return []
        keys = self.store.keys
        with redis_errors("Gmail claim"):
            answers = self._held(keys=[gmail_claims(keys.stream, keys.account, m) for m in msgids], args=list(msgids))
        return [bool(int(a)) for a in answers]

    def defer(self, uidvalidity: int, facts: Sequence[GmailFacts]) -> None:
        if facts:
            with redis_errors("Gmail deferral"):
                self.store.redis.hset(self.store.keys.gmail_deferred,
                                      mapping={f.msgid: f"{uidvalidity}:{f.uid}" for f in facts})

    def deferred(self, uidvalidity: int) -> dict[str, int]:
        """X-GM-MSGID -> UID of the deferred messages; those of another UIDVALIDITY are dropped
        (the re-sync that follows a UIDVALIDITY change looks at every message again)."""
        with redis_errors("Gmail deferral"):
            stored = self.store.redis.hgetall(self.store.keys.gmail_deferred)
        found, stale = {}, []
        for raw_msgid, raw_value in stored.items():
            msgid, value = _text(raw_msgid), _text(raw_value)
            validity, _, uid = value.partition(":")
            if validity == str(uidvalidity):
                found[msgid] = int(uid)
            else:
                stale.append(msgid)
        self.forget(stale)
        return found

    def forget(self, msgids: Sequence[str]) -> None:
        if msgids:
            with redis_errors("Gmail deferral"):
                self.store.redis.hdel(self.store.keys.gmail_deferred, *msgids)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
