"""The Lua scripts behind state.py: each moves a mailbox's position, fingerprints and stream
entries together, atomically (see state.py for what they guarantee).

State hash fields: uidvalidity, last_uid (the position), epoch (incarnation of the folder,
+1 per UIDVALIDITY change), resync_until (highest UID when the current epoch began),
replay_until (UIDs up to here are emitted again without the fingerprint check: a
`mailbox reset`), replay_from (the UID that reset went back to), baseline_until /
baseline_at (first-run baseline: fingerprints of the mail present then are recorded up to
baseline_until, done up to baseline_at), since_ms, updated_at_ms.
"""

from __future__ import annotations

from email_ingestion.producer.fingerprints import LUA as _FP

# A fenced write first checks that the mailbox's lease (ownership.py) still holds the
# caller's value; '' means unfenced (dry runs, tools, tests of the script alone).
_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
"""

# Needs locals fps, legacy, epoch, uidvalidity. True when fingerprint `fp` (digest `d`)
# was recorded in an earlier epoch: in the compact record, or (state written by versions
# before epochs) in the legacy `seen` hash of fingerprint -> "uidvalidity:uid", under
# another UIDVALIDITY.
_EARLIER = """
local has_legacy = redis.call('EXISTS', legacy) == 1
local function earlier(fp, d)
  local e = fp_epoch(fps, d)
  if e ~= nil then return e < epoch end
  if not has_legacy then return false end
  local v = redis.call('HGET', legacy, fp)
  return v ~= false and string.match(v, '^[^:]*') ~= uidvalidity
end
"""

# KEYS: lease, stream, state, fingerprints, legacy seen. ARGV: fence, uidvalidity, last_uid,
# now_ms, since_ms, payload field name, producer field name, records kept per bucket, then
# per item fingerprint, its digest, uid, payload. An item goes out when its UID is above the position
# and its fingerprint was not recorded in an earlier epoch (unless a reset replays its UID).
# A fenced entry also records the fence value (who wrote it).
EMIT = _FENCE + _FP + """
local stream, state, fps, legacy = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local uidvalidity, last_uid, now_ms, since_ms = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local payload_field, producer_field, keep = ARGV[6], ARGV[7], tonumber(ARGV[8])
local stored = redis.call('HMGET', state, 'uidvalidity', 'last_uid', 'epoch', 'replay_until')
local position = tonumber(stored[2] or '0')
local epoch = tonumber(stored[3] or '0')
local replay_until = tonumber(stored[4] or '0')
if stored[1] and stored[1] ~= uidvalidity then
  -- Another UIDVALIDITY without begin_resync (a racing tool saw another one): a new epoch.
  position, replay_until, epoch = 0, 0, epoch + 1
  redis.call('HSET', state, 'epoch', epoch, 'resync_until', 0, 'replay_until', 0,
             'baseline_until', 0, 'baseline_at', 0)
end
""" + _EARLIER + """
local added = {}
for i = 9, #ARGV, 4 do
  local fp, d, uid = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if uid > position and (uid <= replay_until or not earlier(fp, d)) then
    fp_record(fps, d, epoch, keep, true)
    if ARGV[1] == '' then
      added[#added + 1] = redis.call('XADD', stream, '*', payload_field, ARGV[i + 3])
    else
      added[#added + 1] = redis.call('XADD', stream, '*', payload_field, ARGV[i + 3], producer_field, ARGV[1])
    end
  end
end
fp_flush(fps)
if last_uid > position then position = last_uid end
redis.call('HSET', state, 'uidvalidity', uidvalidity, 'last_uid', position, 'updated_at_ms', now_ms)
redis.call('HSETNX', state, 'since_ms', since_ms)
return added
"""

# KEYS: state, fingerprints, legacy seen. ARGV: uidvalidity, then per fingerprint the
# fingerprint and its digest. Read only:
# 1 per fingerprint recorded in an earlier epoch, else 0 (all 0 when the stored UIDVALIDITY
# is another: the emit script then decides alone).
GATED = _FP + """
local state, fps, legacy = KEYS[1], KEYS[2], KEYS[3]
local uidvalidity = ARGV[1]
local stored = redis.call('HMGET', state, 'uidvalidity', 'epoch')
local epoch = tonumber(stored[2] or '0')
""" + _EARLIER + """
local found = {}
for i = 2, #ARGV, 2 do
  found[#found + 1] = (stored[1] == uidvalidity and earlier(ARGV[i], ARGV[i + 1])) and 1 or 0
end
return found
"""

# KEYS: lease, state. ARGV: fence, new uidvalidity, resync_until, now_ms. A new epoch
# begins: position 0, no baseline pending (the old UIDs mean nothing), nothing replayed -
# except during a `reset --uid 0` not yet finished (or not begun; replay_from '0', or for
# states without it a position of 0), which means the whole folder, whatever its UIDs: it
# replays everything up to the new target (what it had re-emitted already goes out once
# more: at least once, never a silent end). Returns 1, 2 when such a replay was carried on
# part-way, or 3 when an unfinished reset to another UID ends here (its UIDs mean nothing
# any more). Idempotent: a second call for the same UIDVALIDITY (lost reply) changes nothing.
BEGIN_RESYNC = _FENCE + """
local s = redis.call('HMGET', KEYS[2], 'uidvalidity', 'last_uid', 'replay_until', 'replay_from')
if s[1] == ARGV[2] then return 1 end
local last, replay_until = tonumber(s[2] or '0'), tonumber(s[3] or '0')
local replay, outcome = 0, 1
if last < replay_until then
  if s[4] == '0' or (not s[4] and last == 0) then
    replay = ARGV[3]
    if last > 0 then outcome = 2 end
  else
    outcome = 3
  end
end
redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'uidvalidity', ARGV[2], 'last_uid', 0, 'resync_until', ARGV[3], 'replay_until', replay,
           'baseline_until', 0, 'baseline_at', 0, 'updated_at_ms', ARGV[4])
return outcome
"""

# KEYS: lease, state. ARGV: fence, uidvalidity, position, since_ms, baseline_until, now_ms.
# The first run's state (INITIAL_SYNC=new/since): nothing when a state exists already.
START = _FENCE + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
redis.call('HSET', KEYS[2], 'uidvalidity', ARGV[2], 'last_uid', ARGV[3], 'since_ms', ARGV[4], 'epoch', 0,
           'baseline_until', ARGV[5], 'baseline_at', 0, 'updated_at_ms', ARGV[6])
return 1
"""

# KEYS: lease, state, fingerprints. ARGV: fence, uidvalidity, baseline done up to this UID,
# records kept per bucket, then the digests of mail present at the first run. Recorded in
# the current epoch unless recorded already; nothing when the UIDVALIDITY moved on.
BASELINE = _FENCE + _FP + """
local state, fps = KEYS[2], KEYS[3]
local stored = redis.call('HMGET', state, 'uidvalidity', 'epoch', 'baseline_at')
if stored[1] ~= ARGV[2] then return 0 end
local epoch, keep = tonumber(stored[2] or '0'), tonumber(ARGV[4])
for i = 5, #ARGV do fp_record(fps, ARGV[i], epoch, keep, false) end
fp_flush(fps)
if tonumber(ARGV[3]) > tonumber(stored[3] or '0') then redis.call('HSET', state, 'baseline_at', ARGV[3]) end
return 1
"""

# KEYS: state. A state from versions before the baseline was recorded, made by
# INITIAL_SYNC=new/since (since_ms > 0): everything at or below its position was emitted or
# deliberately skipped, so that is the baseline still to record.
PLAN_BASELINE = """
local s = redis.call('HMGET', KEYS[1], 'last_uid', 'since_ms', 'baseline_until')
if s[3] or tonumber(s[2] or '0') <= 0 then return 0 end
redis.call('HSET', KEYS[1], 'baseline_until', s[1] or 0, 'baseline_at', 0)
return 1
"""

# KEYS: lease, state. ARGV: uid. `mailbox reset`: the position goes back to uid and every UID
# the producer has passed over or knew of (position, re-sync target) is emitted again
# without the fingerprint check. Refused while a producer holds the mailbox: it would move
# the position forward again in between.
REWIND = """
local s = redis.call('HMGET', KEYS[2], 'uidvalidity', 'last_uid', 'resync_until', 'replay_until')
if not s[1] then return {'no-state', ''} end
local lease = redis.call('GET', KEYS[1])
if lease then return {'leased', lease} end
local uid, last = tonumber(ARGV[1]), tonumber(s[2] or '0')
if uid > last then return {'forward', tostring(last)} end
local replay = math.max(last, tonumber(s[3] or '0'), tonumber(s[4] or '0'))
redis.call('HSET', KEYS[2], 'last_uid', uid, 'replay_until', replay, 'replay_from', uid)
return {'ok', tostring(replay)}
"""
