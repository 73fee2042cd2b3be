"""The Gmail-like server's data: one store of messages per account, folders as views of it.

Gmail keeps each message once, with a set of labels; IMAP folders are views: INBOX holds the
messages labelled \\Inbox, a user label's folder those with that label, `[Gmail]/All Mail`
everything but Spam and Trash. A message has one X-GM-MSGID and X-GM-THRID whatever folder
shows it, and a UID per folder, given when it enters that folder (a label added again gives
a new, higher UID, as on Gmail). Every change bumps the account's mod-sequence (CONDSTORE).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# System labels as X-GM-LABELS names them, and the folder (with its SPECIAL-USE attribute)
# that shows each one. The folder prefix is "[Gmail]" or, for some accounts, "[Google Mail]".
SYSTEM_FOLDERS = {
    "\\Sent": ("Sent Mail", "\\Sent"),
    "\\Draft": ("Drafts", "\\Drafts"),
    "\\Starred": ("Starred", "\\Flagged"),
    "\\Important": ("Important", "\\Important"),
    "\\Trash": ("Trash", "\\Trash"),
    "\\Spam": ("Spam", "\\Junk"),
}
_NOT_IN_ALL_MAIL = {"\\Trash", "\\Spam"}


@dataclass
class GmMessage:
    msgid: int
    thrid: int
    raw: bytes
    internal: dt.datetime
    labels: set[str]
    flags: set[str] = field(default_factory=set)
    modseq: int = 0


@dataclass
class Folder:
    name: str
    attrs: tuple[str, ...]
    label: str | None  # the label this folder shows; None for All Mail
    uidvalidity: int
    uidnext: int = 1
    uids: dict[int, int] = field(default_factory=dict)  # uid -> msgid, ascending
    by_msgid: dict[int, int] = field(default_factory=dict)

    def member(self, message: GmMessage) -> bool:
        if self.label is None:
            return not (message.labels & _NOT_IN_ALL_MAIL)
        return self.label in message.labels


class GmailStore:
    """All accounts' messages and folders; every method is thread-safe, and every change
    wakes the sessions waiting in IDLE."""

    def __init__(self, *, localised: bool = False) -> None:
        self.prefix = "[Google Mail]" if localised else "[Gmail]"
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.messages: dict[int, GmMessage] = {}
        self.folders: dict[str, Folder] = {}
        self.modseq = 1
        self._next_msgid = 1_700_000_000_000_000_000
        self._uidvalidity = 100
        # What the tests look at: body downloads per X-GM-MSGID, ID commands, connections.
        self.body_downloads: dict[int, int] = {}
        self.body_bytes = 0
        self.id_commands: list[list[str]] = []
        self.logins = 0
        self.commands: Counter[str] = Counter()  # per command name, for benchmarks
        self.throttle_next = 0  # this many tagged OKs say [THROTTLED]
        # A test can hold body downloads once this many were served (to stop a producer mid-sync).
        self.hold_after_bodies: int | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        self._add_folder("INBOX", (), "\\Inbox")
        self._add_folder(f"{self.prefix}/All Mail", ("\\All",), None)
        for label, (name, attr) in SYSTEM_FOLDERS.items():
            self._add_folder(f"{self.prefix}/{name}", (attr,), label)

    def _add_folder(self, name: str, attrs: tuple[str, ...], label: str | None) -> Folder:
        self._uidvalidity += 1
        folder = Folder(name, attrs, label, self._uidvalidity)
        self.folders[name] = folder
        return folder

    def folder_of_label(self, label: str) -> str:
        if label == "\\Inbox":
            return "INBOX"
        if label in SYSTEM_FOLDERS:
            return f"{self.prefix}/{SYSTEM_FOLDERS[label][0]}"
        return label

    # -- changes ---------------------------------------------------------------------------

    def add(self, raw: bytes, labels: Iterable[str] = ("\\Inbox",), *, thrid: int | None = None,
            internal: dt.datetime | None = None) -> int:
        """A new message (delivered, or sent) with these labels; returns its X-GM-MSGID."""
        return self.add_many([(raw, tuple(labels))], thrid=thrid, internal=internal)[0]

    def add_many(self, items: Iterable[tuple[bytes, Iterable[str]]], *, thrid: int | None = None,
                 internal: dt.datetime | None = None) -> list[int]:
        with self.changed:
            ids = []
            for raw, labels in items:
                self._next_msgid += 1 + (self._next_msgid % 7)
                msgid = self._next_msgid
                self.modseq += 1
                when = internal or dt.datetime.now(dt.UTC).replace(microsecond=0)
                self.messages[msgid] = GmMessage(msgid, thrid or msgid, raw, when, set(labels), modseq=self.modseq)
                for label in labels:
                    self._ensure_label_folder(label)
                ids.append(msgid)
            self._refresh()
            return ids

    def relabel(self, msgid: int, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """A user, a filter, archiving (removing \\Inbox) or trashing changes labels."""
        with self.changed:
            message = self.messages[msgid]
            for label in add:
                self._ensure_label_folder(label)
            message.labels = (message.labels | set(add)) - set(remove)
            self.modseq += 1
            message.modseq = self.modseq
            self._refresh()

    def create_label(self, label: str) -> None:
        with self.changed:
            self._ensure_label_folder(label)
            self.changed.notify_all()

    def reset_uidvalidity(self, folder_name: str) -> None:
        """The folder is renumbered under a new UIDVALIDITY (Gmail does this, rarely)."""
        with self.changed:
            folder = self.folders[folder_name]
            self._uidvalidity += 1
            fresh = Folder(folder.name, folder.attrs, folder.label, self._uidvalidity)
            self.folders[folder_name] = fresh
            self._refresh()

    def _ensure_label_folder(self, label: str) -> None:
        name = self.folder_of_label(label)
        if name not in self.folders:
            self._add_folder(name, (), label)

    def _refresh(self) -> None:
        """Every folder's view follows the labels: entering gives a new UID, leaving expunges."""
        for folder in self.folders.values():
            for msgid, message in self.messages.items():
                inside = folder.member(message)
                if inside and msgid not in folder.by_msgid:
                    folder.by_msgid[msgid] = folder.uidnext
                    folder.uids[folder.uidnext] = msgid
                    folder.uidnext += 1
                elif not inside and msgid in folder.by_msgid:
                    del folder.uids[folder.by_msgid.pop(msgid)]
        self.changed.notify_all()

    # -- reads -----------------------------------------------------------------------------

    def labels_seen_from(self, message: GmMessage, folder: Folder) -> list[str]:
        """X-GM-LABELS as a folder shows them: without the folder's own label, a quirk
        reported of Gmail (the producer adds it back, so either behaviour works)."""
        return sorted(label for label in message.labels if label != folder.label)

    def count_body(self, msgid: int, size: int) -> None:
        with self.lock:
            self.body_downloads[msgid] = self.body_downloads.get(msgid, 0) + 1
            self.body_bytes += size
            served = sum(self.body_downloads.values())
        if self.hold_after_bodies is not None and served > self.hold_after_bodies:
            self.holding.set()
            self.release.wait(timeout=60)

    def wait_for_change(self, seen_modseq: int, timeout_s: float, stop: Callable[[], bool]) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.modseq != seen_modseq or stop(), timeout=timeout_s)
            return self.modseq
