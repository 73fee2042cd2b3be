"""Every Redis key and stream name this project uses, in one place.

Sharding unit: the stream. A stream is one key, so it lives on one Redis Cluster shard; every
other key a producer or worker touches together with the stream (UID state, dedup index,
retry schedule, DLQ, idempotency markers) carries the stream's name as its hash tag, so that
the Lua scripts and MULTI blocks that move them together stay on one slot. A key without
braces hashes like a tag holding its whole name, so `{email_ingestion_stream}` and the plain
`email_ingestion_stream` share a slot. To spread mailboxes across shards, give each mailbox
its own stream (REDIS_STREAM_NAME).

Streams that share a hash tag (`{mail}alice`, `{mail}bob`: one slot, on purpose) must not
share anything else, so every consumer-side key also names its stream (issue 19 item 1).
A stream without a tag of its own is already named whole by its tag, and its keys keep the
names they had before that fix (see worker/key_migration.py for the tagged ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

PREFIX = "email_ingestion"


def _own_tag(name: str) -> str | None:
    """The hash tag Redis Cluster reads in `name`: from the first '{' to the first '}'
    after it, when not empty; None when the whole name is hashed."""
    start = name.find("{")
    end = name.find("}", start + 1) if start != -1 else -1
    return name[start:end + 1] if end > start + 1 else None


def hash_tag(stream: str) -> str:
    """The cluster hash tag that puts a key on the same slot as `stream`."""
    tag = _own_tag(stream)
    if tag is not None:
        return tag
    if "}" in stream:
        # The whole name is hashed, but no tag can hold it: its '}' would end the tag early.
        raise ValueError(f"stream name {stream!r} has a '}}' outside a {{hash tag}}: its keys could not "
                         "share its cluster slot; drop the '}}' or write a tag, e.g. {mail}")
    return "{" + stream + "}"


def stream_segment(stream: str) -> str:
    """What a key adds after the hash tag to name `stream`: nothing when the tag is the whole
    name (`{email_ingestion_stream}` already says it), else the escaped name and a ':'."""
    return "" if _own_tag(stream) is None else f"{_part(stream)}:"


def _part(value: str) -> str:
    # Account and mailbox names may hold ':' or braces; escape them so keys stay unambiguous
    # and no name can open a second hash tag.
    return value.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


# Per-mailbox keys that hold what a mailbox has done (not who follows it now); adopted from
# an earlier layout when a mailbox first runs under the current one (producer/ownership.py).
# A key added to MailboxKeys that records history belongs here.
MAILBOX_HISTORY_SUFFIXES = ("state", "seen", "fingerprints")


@dataclass(frozen=True)
class MailboxKeys:
    """Keys of one mailbox feeding one stream."""

    stream: str
    account: str
    mailbox: str
    # 1: the layout before issue 18, without the stream's name after its tag, shared by
    # streams with one tag (`{mail}a`, `{mail}b`); only read to adopt a mailbox's history.
    layout: int = 2

    @property
    def _base(self) -> str:
        named = stream_segment(self.stream) if self.layout == 2 else ""
        return f"{PREFIX}:{hash_tag(self.stream)}:{named}{_part(self.account)}:{_part(self.mailbox)}"

    def history(self) -> list[str]:
        """The keys named in MAILBOX_HISTORY_SUFFIXES, in that order."""
        return [f"{self._base}:{suffix}" for suffix in MAILBOX_HISTORY_SUFFIXES]

    @property
    def state(self) -> str:
        """Hash: uidvalidity, last_uid, epoch, resync_until, replay_until, baseline_until,
        baseline_at, since_ms, updated_at_ms (producer/state_lua.py)."""
        return f"{self._base}:state"

    @property
    def seen(self) -> str:
        """Hash: message fingerprint -> "uidvalidity:uid", written by versions before the
        compact `fingerprints` record; still read, never written."""
        return f"{self._base}:seen"

    @property
    def gmail_deferred(self) -> str:
        """Hash: X-GM-MSGID -> "uidvalidity:uid" of messages this Gmail folder left to another
        folder of the account (claimed there, or INBOX mail seen from All Mail); re-checked
        every pass, emitted from here if the other folder never does."""
        return f"{self._base}:gm_deferred"

    @property
    def progress(self) -> str:
        """String with TTL: the figures of the sync step in progress (done, total, rate, ETA) as
        JSON, for `email-ingest status`; beside `state`, which only the sync's scripts write."""
        return f"{self._base}:progress"

    @property
    def gmail_modseq(self) -> str:
        """String: the folder's HIGHESTMODSEQ at its last label check (GMAIL_LABEL_EVENTS);
        kept out of `state` so that a folder with no state yet can have it."""
        return f"{self._base}:gm_modseq"

    @property
    def fingerprints(self) -> str:
        """Hash: bucket (0-4095) -> packed 12-byte records (8-byte fingerprint digest, 32-bit
        epoch) of the messages emitted, or present at the first run (producer/fingerprints.py)."""
        return f"{self._base}:fingerprints"

    @property
    def lease(self) -> str:
        """String with TTL: "<producer id>:<fencing token>" of the producer that owns the mailbox."""
        return f"{self._base}:lease"

    @property
    def activity(self) -> str:
        """Hash with TTL: what the owning producer is doing (state, detail, sync progress), for the console."""
        return f"{self._base}:activity"

    @property
    def avoid(self) -> str:
        """Hash: producer id -> until when (Redis server time, ms) it stays away from the
        mailbox after it could not serve it, while another live producer may try."""
        return f"{self._base}:avoid"

    @property
    def lease_token(self) -> str:
        """Counter: the last fencing token handed out; every new owner gets a higher one."""
        return f"{self._base}:lease_token"


@dataclass(frozen=True)
class StreamKeys:
    """Keys of the consumer side of one stream: the stream, its group and its DLQ stream."""

    stream: str
    group: str
    dlq: str = ""

    @classmethod
    def of(cls, stream: str, group: str, dlq_name: str) -> StreamKeys:
        """The keys of `group` on `stream`, with the DLQ named as dlq_stream() names it."""
        return cls(stream, group, dlq_stream(stream, dlq_name))

    @cached_property
    def _base(self) -> str:
        return f"{PREFIX}:{hash_tag(self.stream)}:{stream_segment(self.stream)}{_part(self.group)}"

    @property
    def retries(self) -> str:
        """Sorted set: retry record id scored by due time in ms."""
        return f"{self._base}:retry:due"

    @property
    def retry_payloads(self) -> str:
        """Hash: retry record id -> JSON record (payload, attempts, errors)."""
        return f"{self._base}:retry:data"

    def idempotency(self, key: str) -> str:
        """String: "lease:<consumer>" while handled, "done" afterwards (TTL)."""
        return f"{self._base}:idem:{key}"

    def flow(self, minute_ms: int) -> str:
        """Hash with TTL: messages handled in one minute and their arrival-to-done latency
        (count, sum and histogram buckets), written by workers, read by the console."""
        return f"{self._base}:flow:{minute_ms}"

    def heartbeat(self, consumer: str) -> str:
        """String with TTL: present while the consumer is alive."""
        return f"{self._base}:hb:{_part(consumer)}"


def dlq_stream(stream: str, dlq_name: str) -> str:
    """The DLQ stream of `stream`: the configured name plus the stream's hash tag, so a
    message moves to the DLQ in the same atomic step that removes it from the retry path,
    plus the stream's name when the tag alone does not say it."""
    named = stream_segment(stream)
    return legacy_dlq_stream(stream, dlq_name) + (f":{named[:-1]}" if named else "")


def legacy_dlq_stream(stream: str, dlq_name: str) -> str:
    """The DLQ of `stream` before keys named their stream: shared by every stream with the
    same tag. Still the name for a stream without a tag of its own."""
    tag = hash_tag(stream)
    if _own_tag(dlq_name) == tag:
        return dlq_name
    # Braces of the configured name would open a tag of their own: escape them.
    return f"{dlq_name.replace('{', '%7B').replace('}', '%7D')}:{tag}"


# Buckets of one account's Gmail identity store: 1,000,000 messages make about 61 per
# bucket, under Redis's hash-max-listpack-entries (128), so every bucket stays a compact
# listpack instead of a hash table (about a third of the memory; scripts/gmail_identity_memory.py).
GMAIL_IDENTITY_BUCKETS = 16384


def gmail_identity(stream: str, account: str, msgid: str) -> str:
    """Hash: X-GM-MSGID -> the message's labels at its last event, one bucket of the account's
    messages ever emitted to `stream` (issue 20: one event per Gmail message, across folders)."""
    bucket = int(msgid) % GMAIL_IDENTITY_BUCKETS
    return f"{PREFIX}:{hash_tag(stream)}:gm:{_part(account)}:{bucket}"


def gmail_claims(stream: str, account: str, msgid: str) -> str:
    """Hash: X-GM-MSGID -> "<mailbox>|<expiry ms>": the folder downloading a message not yet
    emitted, so that the account's other folders do not download it too (a bucket, as above)."""
    bucket = int(msgid) % GMAIL_IDENTITY_BUCKETS
    return f"{PREFIX}:{hash_tag(stream)}:gmclaim:{_part(account)}:{bucket}"


def gmail_downloads(stream: str, account: str) -> str:
    """Hash: minute slot (ms since the epoch / slot length) -> body bytes downloaded then, plus
    `waiting_until_ms` while bodies wait: the account's rolling GMAIL_DAILY_DOWNLOAD_MB budget."""
    return f"{PREFIX}:{hash_tag(stream)}:gmdl:{_part(account)}"


def legacy_consumer_base(stream: str, group: str) -> str:
    """Where StreamKeys kept a tagged stream's keys before they named the stream: shared by
    every stream with the same tag. Read only by the upgrade (worker/key_migration.py)."""
    return f"{PREFIX}:{hash_tag(stream)}:{_part(group)}"


def producers_key(fleet: str) -> str:
    """Sorted set: live producers of one fleet (producers reading the same mailbox list),
    scored by when their registration expires (Redis server time, ms)."""
    return f"{PREFIX}:producers:{fleet}"


def offered_key(fleet: str) -> str:
    """Sorted set: mailboxes (Mailbox.key) a producer of the fleet gave back because it could
    not serve them, scored by when (Redis server time, ms): another producer takes them even
    above its fair share."""
    return f"{PREFIX}:offered:{fleet}"


def wait_marker(stream: str) -> str:
    """Hash written just before WAIT (REDIS_WAIT_REPLICAS), on the stream's slot."""
    return f"{PREFIX}:{hash_tag(stream)}:wait"


def console_session(token_digest: str) -> str:
    """Hash with TTL: one console session (user, role, CSRF token, times), by the SHA-256 of
    its cookie value, so a copy of Redis does not hand out usable cookies."""
    return f"{PREFIX}:console:session:{token_digest}"


def console_user_sessions(user: str) -> str:
    """Set: the session digests of one console user, to end them all when the user is removed."""
    return f"{PREFIX}:console:user_sessions:{_part(user)}"


def console_login_failures(kind: str, subject: str) -> str:
    """Counter with TTL: failed console logins of one user name or one client address."""
    return f"{PREFIX}:console:login_failures:{kind}:{_part(subject)}"


def console_audit() -> str:
    """Stream: what console users did (who, when, what, how many)."""
    return f"{PREFIX}:console:audit"
