"""The per-mailbox record of fingerprints: which messages this mailbox has already had.

After a UIDVALIDITY change UIDs mean nothing, so a message is recognised by its fingerprint
(identity.py). The record says, per fingerprint, in which *epoch* (incarnation of the folder:
0 at the first run, +1 at every UIDVALIDITY change) it was emitted, or found present when
the first run started with INITIAL_SYNC=new/since (the baseline). A message is skipped
when its fingerprint was recorded in an *earlier* epoch, whenever it reappears: in the
re-sync of a re-created folder, or refilled later by a client or a migration tool. Within
one epoch the position (last UID) alone decides, as in the normal path, so two distinct
messages that share a fingerprint (a list re-sending an identical message) both go out
when they arrive in the same incarnation; the false-merge risk is confined to mail that
matches mail of an earlier incarnation.

Layout, chosen for bytes per message (scripts/bench_fingerprints.py measures it): one hash
per mailbox; the fingerprint's 8-byte digest (the first 8 bytes of its SHA-1, computed here
and passed to the scripts) picks one of 4,096 buckets (its first 12 bits), and each
bucket's value is a string of 12-byte records (the digest, then the epoch as a big-endian
32-bit number), oldest first. A plain hash field per fingerprint costs ~56-64 bytes in
Redis (dict entry, two strings, the bucket slot); packed records cost ~12. A lookup scans
one bucket (at 1,000,000 fingerprints ~244 records, 3 KB). The 64-bit digest makes an
accidental match between a new message and a kept record ~N/2^64 (5e-14 at a million).

Retention: at most `kept` fingerprints per mailbox (FINGERPRINTS_PER_MAILBOX), enforced per
bucket (kept/4,096 records each): when a bucket is full its oldest records are dropped, so
roughly the `kept` most recently emitted fingerprints are kept, for as long as the mailbox's
state is. Written by hand rather than with a Bloom or cuckoo filter (RedisBloom): those are
modules a plain Redis lacks, and a filter's false positives would drop new mail.
"""

from __future__ import annotations

import hashlib

BUCKETS = 4096
RECORD_BYTES = 12

# Lua helpers shared by the scripts in state.py (prepended to each). Buckets read by a script
# are cached in `fp_cache` and written back once by fp_flush, so a batch costs one HGET per
# bucket it touches and one HSET at the end.
LUA = """
local FP_RECORD = 12
local fp_cache, fp_dirty = {}, {}
local function fp_bucket(d)
  return tostring(string.byte(d, 1) * 16 + math.floor(string.byte(d, 2) / 16))
end
local function fp_load(key, b)
  local v = fp_cache[b]
  if v == nil then v = redis.call('HGET', key, b) or ''; fp_cache[b] = v end
  return v
end
-- The offset of d's record in v (only at record boundaries), or nil.
local function fp_find(v, d)
  local init = 1
  while true do
    local p = string.find(v, d, init, true)
    if p == nil or (p - 1) % FP_RECORD == 0 then return p end
    init = p + 1
  end
end
-- The epoch digest `d` was recorded in, or nil.
local function fp_epoch(key, d)
  local v = fp_load(key, fp_bucket(d))
  local p = fp_find(v, d)
  if p == nil then return nil end
  return (struct.unpack('>I4', v, p + 8))
end
-- Record digest `d` in `epoch` (moving an older record to it only when `refresh`), keeping
-- at most `keep` records in its bucket, the newest.
local function fp_record(key, d, epoch, keep, refresh)
  local b = fp_bucket(d)
  local v = fp_load(key, b)
  local p = fp_find(v, d)
  local e = struct.pack('>I4', epoch)
  if p == nil then
    v = v .. d .. e
    if #v > keep * FP_RECORD then v = string.sub(v, #v - keep * FP_RECORD + 1) end
  elseif refresh and string.sub(v, p + 8, p + 11) ~= e then
    v = string.sub(v, 1, p + 7) .. e .. string.sub(v, p + 12)
  else
    return
  end
  fp_cache[b], fp_dirty[b] = v, true
end
local function fp_flush(key)
  local args = {}
  for b in pairs(fp_dirty) do
    args[#args + 1] = b; args[#args + 1] = fp_cache[b]
    -- unpack() is bounded by Lua's C stack (~8,000 values): write in slices.
    if #args >= 1000 then redis.call('HSET', key, unpack(args)); args = {} end
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end
"""


def digest(fingerprint: str) -> bytes:
    """The 8 bytes a fingerprint is kept as."""
    return hashlib.sha1(fingerprint.encode(), usedforsecurity=False).digest()[:8]


def per_bucket(kept: int) -> int:
    """Records each bucket keeps so that a mailbox keeps about `kept` fingerprints."""
    return max(1, -(-kept // BUCKETS))
