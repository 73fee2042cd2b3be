"""The stream-entry format: the field names producer, worker, retries and DLQ share.

Lua scripts get these names as ARGV rather than spelling them, so a rename here is a rename
everywhere. An entry on the main stream has PAYLOAD, and ATTEMPT/FIRST_FAILED_MS/LAST_ERROR
once it comes back from the retry schedule; a DLQ entry adds ORIGINAL_ID and the failure
fields of DeadLetter; a replayed entry carries REPLAYED_FROM (the DLQ id it came from).
"""

from __future__ import annotations

PAYLOAD = "payload"
ATTEMPT = "attempt"
FIRST_FAILED_MS = "first_failed_ms"
LAST_ERROR = "last_error"
ORIGINAL_ID = "original_id"
REPLAYED_FROM = "replayed_from"
# On a dead letter: the stream it was read from, where a replay returns it (issue 19 item 14).
SOURCE_STREAM = "stream"
# "<producer id>:<fencing token>" of the producer that appended the entry (producer/ownership.py):
# who wrote what, and for each mailbox the tokens only ever grow along the stream.
PRODUCER = "producer"
# Deliveries of this message that ended without an outcome (its worker died or froze) on the
# entries it had before this one: deferrals and retries re-add a message as a new entry, whose
# Redis delivery counter starts again at 1, so the count of crashes travels with it.
DELIVERIES = "deliveries"
