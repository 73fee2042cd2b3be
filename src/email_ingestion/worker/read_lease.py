"""Reading a batch and taking its leases in one round trip (issue 19, speed).

The worker's busy loop made three round trips per batch: the read, the leases, the
settlement. This script reads without BLOCK (a script cannot block) and leases each
entry's idempotency key in the same call, so a busy worker makes two, like the reference
loop. The key is found in the payload text without decoding it: the producer writes
`{"schema_version":1,"idempotency_key":"...` and a top-level key before any `{`, `[` or
backslash can only be that; anything else is decoded with cjson. Python checks each key
against the validated payload (leasing.py): a mismatch gives the lease back and takes the
usual path. The blocking read of an idle worker stays a plain XREADGROUP.

On Redis Cluster the idempotency keys share the stream's hash tag (keys.py), so the script
touches one slot only.
"""

from __future__ import annotations

from typing import Any

import redis

from email_ingestion.common import entry_fields as F
from email_ingestion.common.keys import StreamKeys
from email_ingestion.common.text import to_text
from email_ingestion.worker.delivery import Delivery, LeaseAsked

# KEYS: stream; ARGV: group, consumer, count, lease ms, idempotency key prefix, payload field.
# Returns per entry {id, fields, key | false, previous value | false}.
_READ_AND_LEASE = """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not reply then return {} end
local marker = '"idempotency_key":"'
local function key_of(payload)
  local at = string.find(payload, marker, 1, true)
  if at and at < 200 and not string.find(string.sub(payload, 2, at - 1), '[{%[\\\\]') then
    local stop = string.find(payload, '"', at + #marker, true)
    if stop then
      local key = string.sub(payload, at + #marker, stop - 1)
      if not string.find(key, '\\\\', 1, true) then return key end
    end
  end
  local ok, doc = pcall(cjson.decode, payload)
  if ok and type(doc) == 'table' and type(doc.idempotency_key) == 'string' then return doc.idempotency_key end
  return false
end
local out = {}
for i, entry in ipairs(reply[1][2]) do
  local fields, key, previous = entry[2], false, false
  for j = 1, #fields, 2 do
    if fields[j] == ARGV[6] then key = key_of(fields[j + 1]) end
  end
  if key and key ~= '' then
    local value = 'lease:' .. ARGV[2] .. ':' .. entry[1]
    local name = ARGV[5] .. key
    previous = redis.call('SET', name, value, 'NX', 'PX', ARGV[4], 'GET')
    if previous == value then redis.call('PEXPIRE', name, ARGV[4]) end
  else
    key = false
  end
  out[i] = {entry[1], fields, key, previous}
end
return out
"""


class ReadAndLease:
    def __init__(self, client: redis.Redis, *, keys: StreamKeys, consumer: str, lease_ms: int) -> None:
        self.keys = keys
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.prefix = keys.idempotency("")
        # Only where a key name is the prefix plus the key can the script build it.
        self.usable = keys.idempotency("k") == self.prefix + "k"
        self._script = client.register_script(_READ_AND_LEASE)

    def queue(self, pipe: redis.client.Pipeline, count: int) -> None:
        """Add the read of up to `count` new entries, and their leases, to `pipe`."""
        if not self.usable:
            pipe.xreadgroup(self.keys.group, self.consumer, {self.keys.stream: ">"}, count=count)
            return
        self._script(keys=[self.keys.stream], args=[self.keys.group, self.consumer, count, self.lease_ms,
                                                      self.prefix, F.PAYLOAD], client=pipe)

    def parse(self, reply: Any) -> list[Delivery]:
        if not self.usable:
            return [Delivery.from_redis(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]
        return [_delivery(entry) for entry in reply or []]


def _delivery(entry: list[Any]) -> Delivery:
    entry_id, flat, key, previous = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    asked = LeaseAsked(to_text(key), previous or None) if key else None
    return Delivery(to_text(entry_id), fields, 1, asked)
