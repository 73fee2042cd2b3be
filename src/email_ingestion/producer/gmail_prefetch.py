"""Before bodies: which messages of a Gmail batch the account has not emitted yet (issue 20).

One cheap UID FETCH (X-GM-MSGID, X-GM-LABELS, RFC822.SIZE) per batch, one pipelined lookup
in the identity store, and only the unknown messages are downloaded: a message already
emitted from INBOX or a label costs its All Mail copy a few dozen bytes, not its body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.imap.session import ImapSession
from email_ingestion.imap.special_use import own_label
from email_ingestion.producer.download_budget import DownloadBudget
from email_ingestion.producer.fetch import Downloaded
from email_ingestion.producer.gmail_claims import Claim, Claims
from email_ingestion.producer.gmail_identity import GmailFacts, GmailStateStore, facts_of

FACTS_PER_FETCH = 1000
PREFETCH_ITEMS = ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS", "RFC822.SIZE"]


@dataclass(frozen=True)
class Retry:
    """Deferred messages to download now: their UIDs, the large ones, their X-GM-MSGIDs."""

    uids: list[int]
    large: set[int]
    msgids: list[str]


class GmailPrefetch:
    def __init__(self, *, session: ImapSession, store: GmailStateStore, defer_inbox: bool = False,
                 budget: DownloadBudget | None = None) -> None:
        self.session = session
        self.store = store
        self.budget = budget  # GMAIL_DAILY_DOWNLOAD_MB (download_budget.py)
        self.claims = Claims(store=store)
        self.defer_inbox = defer_inbox  # the account's INBOX is followed too (gmail_claims.py)
        self._taken: dict[int, str] = {}  # UID -> X-GM-MSGID claimed for the download under way

    @property
    def active(self) -> bool:
        return self.session.is_gmail

    def facts(self, uids: Sequence[int], items: Sequence[str] = PREFETCH_ITEMS) -> list[GmailFacts]:
        own = own_label(self.session.folder)
        fetched: dict[int, FetchedMessage] = {}
        ordered = sorted(uids)
        for start in range(0, len(ordered), FACTS_PER_FETCH):  # deferred UIDs can be many: short commands
            fetched.update(self.session.fetch(ordered[start:start + FACTS_PER_FETCH], list(items)))
        return [f for _, message in sorted(fetched.items()) if (f := facts_of(message, own)) is not None]

    def to_download(self, uids: Sequence[int], uidvalidity: int) -> list[int]:
        """The UIDs to download: X-GM-MSGIDs no folder of the account emitted yet, claimed
        for this folder; those another folder is downloading (or INBOX will) are deferred."""
        if not uids:
            return []
        facts = self.facts(uids)
        replay = self.store.replay_until()
        again = [f for f in facts if f.uid <= replay]  # a reset asked for these again
        take, keep, _ = self._sort([f for f in facts if f.uid > replay])
        self.claims.defer(uidvalidity, keep)
        take = self._spend(again + take, uidvalidity)
        self._taken = {f.uid: f.msgid for f in take if f.uid > replay}
        return sorted(f.uid for f in take)

    def _spend(self, take: list[GmailFacts], uidvalidity: int) -> list[GmailFacts]:
        """`take`, once the download budget allows it. A wait can outlast the claims (hours
        against CLAIM_TTL_MS): what another folder claimed or emitted meanwhile is left to it."""
        if self.budget is None or not self.budget.spend(sum(f.size for f in take)):
            return take
        replay = self.store.replay_until()
        claimed = [f for f in take if f.uid > replay]
        answers = self.claims.claim([f.msgid for f in claimed])
        self.claims.defer(uidvalidity, [f for f, a in zip(claimed, answers, strict=True) if a == Claim.OTHERS])
        ours = {f.msgid for f, a in zip(claimed, answers, strict=True) if a == Claim.OURS}
        return [f for f in take if f.uid <= replay or f.msgid in ours]

    def retry_deferred(self, uidvalidity: int, large_bytes: int) -> Retry:
        """The deferred messages this folder must emit itself now; forgets those emitted."""
        deferred = self.claims.deferred(uidvalidity)
        if not deferred:
            return Retry([], set(), [])
        facts = self.facts(sorted(deferred.values()))
        present = {f.msgid for f in facts}
        take, _, emitted = self._sort(facts)
        self.claims.forget([m for m in deferred if m not in present] + [f.msgid for f in emitted])
        take = self._spend(take, uidvalidity)
        self._taken = {f.uid: f.msgid for f in take}
        return Retry([f.uid for f in take], {f.uid for f in take if f.size > large_bytes}, [f.msgid for f in take])

    def _sort(self, facts: list[GmailFacts]) -> tuple[list[GmailFacts], list[GmailFacts], list[GmailFacts]]:
        """(claimed for us, left to another folder, emitted already)."""
        to_inbox = [f for f in facts if self._for_inbox(f)]
        others = [f for f in facts if not self._for_inbox(f)]
        known = self.store.known([f.msgid for f in to_inbox])
        answers = self.claims.claim([f.msgid for f in others])
        take = [f for f, a in zip(others, answers, strict=True) if a == Claim.OURS]
        keep = [f for f, k in zip(to_inbox, known, strict=True) if k is None]
        keep += [f for f, a in zip(others, answers, strict=True) if a == Claim.OTHERS]
        emitted = [f for f, k in zip(to_inbox, known, strict=True) if k is not None]
        emitted += [f for f, a in zip(others, answers, strict=True) if a == Claim.EMITTED]
        return take, keep, emitted

    def _for_inbox(self, facts: GmailFacts) -> bool:
        return self.defer_inbox and "\\Inbox" in facts.labels and own_label(self.session.folder) != "\\Inbox"

    def complete(self, downloaded: Downloaded) -> Downloaded:
        """Add the folder's own label, which Gmail may leave out of X-GM-LABELS, so a
        payload's labels do not depend on the folder it was read from; release the claims
        of the messages that left the folder before their download."""
        got = {m.uid for m in downloaded.messages}
        self.claims.release([msgid for uid, msgid in self._taken.items() if uid not in got])
        self._taken = {}
        own = own_label(self.session.folder)
        if own is None:
            return downloaded
        return Downloaded(tuple(replace(m, gmail_labels=(*m.gmail_labels, own)) if own not in m.gmail_labels else m
                                for m in downloaded.messages))
