"""Gmail label changes as events (issue 20, GMAIL_LABEL_EVENTS).

Gmail's IDLE does not announce label changes, and it offers CONDSTORE but not QRESYNC. So
after each sync pass the folder is asked for the messages whose mod-sequence rose above the
HIGHESTMODSEQ stored at the last check (`UID FETCH 1:<position> ... (CHANGEDSINCE n)`), and
each one already emitted whose labels differ from those in the identity store becomes one
`labels_changed` entry. The comparison and the record happen in one script: INBOX, a label
folder and All Mail all see the same change, and it goes out once. Archiving is `\\Inbox`
removed, trashing `\\Trash` added; a flag change alone (same labels) is no event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.entry_fields import PAYLOAD, PRODUCER
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import LABELS_CHANGED_EVENT, EmailPayload
from email_ingestion.common.redis_client import redis_errors
from email_ingestion.common.text import iso_utc
from email_ingestion.imap.fetched import fetched_message
from email_ingestion.imap.session import ImapSession
from email_ingestion.imap.special_use import own_label
from email_ingestion.producer.gmail_claims import Claims
from email_ingestion.producer.gmail_identity import GmailFacts, GmailStateStore, encode_labels, facts_of
from email_ingestion.producer.state_lua import _FENCE

# KEYS: lease, stream, the folder's last HIGHESTMODSEQ, then one identity bucket per item.
# ARGV: fence, payload field,
# producer field, new HIGHESTMODSEQ, then per item X-GM-MSGID, labels expected, labels now,
# payload. An item goes out only when the stored labels are still the expected ones.
_CHANGES = _FENCE + """
local added = {}
local bucket = 3
for i = 5, #ARGV, 4 do
  bucket = bucket + 1
  if redis.call('HGET', KEYS[bucket], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[bucket], ARGV[i], ARGV[i + 2])
    if ARGV[1] == '' then
      added[#added + 1] = redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[i + 3])
    else
      added[#added + 1] = redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[i + 3], ARGV[3], ARGV[1])
    end
  end
end
redis.call('SET', KEYS[3], ARGV[4])
return added
"""


@dataclass(frozen=True)
class LabelChange:
    facts: GmailFacts
    modseq: int
    before: frozenset[str]


class LabelWatcher:
    def __init__(self, *, session: ImapSession, store: GmailStateStore, account: str, mailbox: str,
                 clock_ms: Clock = wall_ms) -> None:
        self.session = session
        self.store = store
        self.account = account
        self.mailbox = mailbox
        self.clock_ms = clock_ms
        self._script = store.redis.register_script(_CHANGES)

    def prime(self, highest_modseq: int | None) -> None:
        """Take the folder's label baseline before its first sync emits anything: a label
        changed on a message that sync already emitted (it can last a day) is then an event."""
        if highest_modseq is not None and self.session.is_gmail and b"CONDSTORE" in self.session.capabilities:
            with redis_errors("label state"):
                self.store.redis.set(self.store.keys.gmail_modseq, highest_modseq, nx=True)

    def check(self) -> int:
        """Emit the label changes since the last check; the number of events."""
        if not (self.session.is_gmail and b"CONDSTORE" in self.session.capabilities):
            return 0
        status = self.session.examine()
        state = self.store.load()
        if status.highest_modseq is None:
            return 0
        with redis_errors("label state"):
            stored = self.store.redis.get(self.store.keys.gmail_modseq)
        if stored is not None and int(stored) >= status.highest_modseq:
            return 0
        # No baseline yet (a new folder, even an empty one): changes from here on are events.
        last_uid = state.last_uid if state is not None else 0
        if stored is None:
            return self._emit([], status.highest_modseq, status.uidvalidity)
        changes, in_flight = self._changes(int(stored), last_uid)
        # A change to a message another folder is downloading (claimed, its labels read before
        # the change) is checked again next time: once emitted, its stored labels are stale.
        baseline = min([status.highest_modseq, *(modseq - 1 for modseq in in_flight)])
        return self._emit(changes, baseline, status.uidvalidity)

    def _changes(self, since: int, last_uid: int) -> tuple[list[LabelChange], list[int]]:
        """The label changes of emitted messages, and the mod-sequences of the changes to
        messages still being downloaded by a folder."""
        own = own_label(self.session.folder)
        fetched = self.session.fetch_changed(last_uid, ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"], since)
        found = [(f, _modseq(data)) for uid, data in sorted(fetched.items())
                 if (f := facts_of(fetched_message(uid, data), own))]
        # Claims before identities: a claim ends with the emission, in one script, so a message
        # neither claimed then nor emitted after was claimed later, its labels read after the change.
        claimed = Claims(store=self.store).held([f.msgid for f, _ in found])
        known = self.store.known([f.msgid for f, _ in found])
        changes = [LabelChange(f, modseq, before) for (f, modseq), before in zip(found, known, strict=True)
                   if before is not None and before != f.labels]
        in_flight = [modseq for (_, modseq), before, held in zip(found, known, claimed, strict=True)
                     if before is None and held]
        return changes, in_flight

    def _emit(self, changes: Sequence[LabelChange], highest_modseq: int, uidvalidity: int) -> int:
        keys = [self.store.keys.lease, self.store.keys.stream, self.store.keys.gmail_modseq]
        args: list[str | int] = [self.store.fence, PAYLOAD, PRODUCER, highest_modseq]
        for change in changes:
            msgid = change.facts.msgid
            keys.append(self.store.bucket(msgid))
            args.extend((msgid, encode_labels(change.before), encode_labels(change.facts.labels),
                         self._payload(change, uidvalidity).to_json()))
        with redis_errors("label events"):
            added = self._script(keys=keys, args=args)
        self.store._check_fence(added)  # the same refusal as every fenced write
        return len(added or [])

    def _payload(self, change: LabelChange, uidvalidity: int) -> EmailPayload:
        facts = change.facts
        with correlation() as correlation_id:
            return EmailPayload(
                event=LABELS_CHANGED_EVENT, account=self.account, mailbox=self.mailbox, uid=facts.uid,
                uidvalidity=uidvalidity, idempotency_key=f"gm-labels:{self.account}:{facts.msgid}:{change.modseq}",
                gmail_msgid=facts.msgid, gmail_thrid=facts.thrid, gmail_labels=sorted(facts.labels),
                labels_added=sorted(facts.labels - change.before), labels_removed=sorted(change.before - facts.labels),
                fetched_at=_iso_ms(self.clock_ms()), correlation_id=correlation_id)


def _iso_ms(now_ms: int) -> str:
    return iso_utc(dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)) or ""


def _modseq(data: dict[bytes, Any]) -> int:
    value = data.get(b"MODSEQ")
    return int(value[0] if isinstance(value, tuple) else value or 0)
