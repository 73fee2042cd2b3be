"""One client connection to the Gmail-like server: the commands the producer sends."""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Callable
from typing import Any

from tests.support.gmail_server.protocol import (
    Token,
    header_block,
    header_fields,
    imap_date,
    in_set,
    label_atom,
    mailbox_name,
    number_set,
    wire_name,
)
from tests.support.gmail_server.store import Folder, GmailStore, GmMessage

IDLE_SLICE_S = 0.1


class Session:
    def __init__(self, store: GmailStore, users: dict[str, str], send: Callable[[str | bytes], None],
                 readline: Callable[[], bytes], readable: Callable[[float], bool]) -> None:
        self.store = store
        self.users = users
        self.send = send
        self.readline = readline
        self.readable = readable
        self.user: str | None = None
        self.folder: Folder | None = None
        self.view: list[int] = []  # the UIDs this session knows, sequence number = index + 1
        self.condstore = False

    def run(self, tag: str, name: str, args: list[Token]) -> bool:
        """Answer one command; False when the connection ends."""
        if name == "UID" and args:
            name, args = f"UID {str(args[0]).upper()}", args[1:]
        with self.store.lock:
            self.store.commands[name] += 1
        handler = getattr(self, "cmd_" + name.replace(" ", "_").lower(), None)
        if handler is None or (self.user is None and name not in ("CAPABILITY", "LOGIN", "ID", "NOOP", "LOGOUT")):
            self.send(f"{tag} BAD Unknown command or not allowed now: {name}")
            return True
        try:
            result = handler(args)
        except ConnectionAbortedError:
            return False
        except (IndexError, ValueError, KeyError) as exc:
            self.send(f"{tag} BAD Could not parse command ({type(exc).__name__})")
            return True
        if result is False:
            self.send(f"{tag} OK LOGOUT completed")
            return False
        if isinstance(result, str) and result.startswith("NO"):
            self.send(f"{tag} {result}")
            return True
        self.send(f"{tag} OK {self._throttled()}{result or 'Success'}")
        return True

    def _throttled(self) -> str:
        with self.store.lock:
            if self.store.throttle_next > 0:
                self.store.throttle_next -= 1
                return "[THROTTLED] "
        return ""

    # -- not authenticated -----------------------------------------------------------------

    def cmd_capability(self, _args: list[Token]) -> None:
        from tests.support.gmail_server.server import CAPABILITIES
        self.send(f"* CAPABILITY {CAPABILITIES}")

    def cmd_login(self, args: list[Token]) -> str | None:
        user, password = str(args[0]), str(args[1])
        if self.users.get(user) != password:
            return "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
        self.user = user
        with self.store.lock:
            self.store.logins += 1
        return f"{user} authenticated (Success)"

    def cmd_id(self, args: list[Token]) -> None:
        fields = args[0] if args and isinstance(args[0], list) else []
        with self.store.lock:
            self.store.id_commands.append([str(f) for f in fields])
        self.send('* ID ("name" "GImap" "vendor" "Google, Inc." "support-url" NIL)')

    def cmd_noop(self, _args: list[Token]) -> None:
        self._sync_view()

    cmd_check = cmd_noop

    def cmd_logout(self, _args: list[Token]) -> bool:
        self.send("* BYE LOGOUT Requested")
        return False

    # -- authenticated ---------------------------------------------------------------------

    def cmd_enable(self, args: list[Token]) -> None:
        if any(str(a).upper() == "CONDSTORE" for a in args):
            self.condstore = True
            self.send("* ENABLED CONDSTORE")

    def cmd_namespace(self, _args: list[Token]) -> None:
        self.send('* NAMESPACE (("" "/")) NIL NIL')

    def cmd_list(self, args: list[Token]) -> None:
        pattern = mailbox_name(args[1]) if str(args[1]) else ""
        with self.store.lock:
            rows = [("\\HasChildren \\Noselect", self.store.prefix)]
            rows += [(" ".join(("\\HasNoChildren",) + f.attrs), f.name) for f in self.store.folders.values()]
        for attrs, name in rows:
            if fnmatch.fnmatchcase(name, pattern.replace("%", "*")):
                self.send(f'* LIST ({attrs}) "/" {wire_name(name)}')

    cmd_xlist = cmd_list

    def cmd_status(self, args: list[Token]) -> str | None:
        folder = self.store.folders.get(mailbox_name(args[0]))
        if folder is None:
            return "NO [NONEXISTENT] Unknown Mailbox"
        wanted = [str(item).upper() for item in args[1]] if isinstance(args[1], list) else []
        with self.store.lock:
            values = {"MESSAGES": len(folder.uids), "UIDNEXT": folder.uidnext, "UIDVALIDITY": folder.uidvalidity,
                      "UNSEEN": 0, "RECENT": 0, "HIGHESTMODSEQ": self.store.modseq}
        self.send(f"* STATUS {wire_name(folder.name)} ({' '.join(f'{k} {values[k]}' for k in wanted)})")
        return None

    def cmd_select(self, args: list[Token]) -> str:
        return self._select(args).replace("[READ-ONLY]", "[READ-WRITE]")

    def cmd_examine(self, args: list[Token]) -> str:
        return self._select(args)

    def _select(self, args: list[Token]) -> str:
        name = mailbox_name(args[0])
        if len(args) > 1 and isinstance(args[1], list) and any(str(a).upper() == "CONDSTORE" for a in args[1]):
            self.condstore = True
        with self.store.lock:
            folder = self.store.folders.get(name)
            if folder is None:
                self.folder = None
                return f"NO [NONEXISTENT] Unknown Mailbox: {name} (now in authenticated state) (Failure)"
            self.folder, self.view = folder, list(folder.uids)
            modseq = self.store.modseq
        self.send("* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen $NotPhishing $Phishing)")
        self.send("* OK [PERMANENTFLAGS ()] Flags permitted.")
        self.send(f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid.")
        self.send(f"* {len(self.view)} EXISTS")
        self.send("* 0 RECENT")
        self.send(f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID.")
        if self.condstore:
            self.send(f"* OK [HIGHESTMODSEQ {modseq}]")
        return "[READ-ONLY] " + name + " selected. (Success)"

    def cmd_close(self, _args: list[Token]) -> None:
        self.folder, self.view = None, []

    cmd_unselect = cmd_close

    def cmd_idle(self, _args: list[Token]) -> None:
        self.send("+ idling")
        seen = -1
        while True:
            if self.readable(IDLE_SLICE_S):
                self.readline()  # DONE
                return
            seen = self.store.wait_for_change(seen, IDLE_SLICE_S, lambda: False)
            self._sync_view()

    # -- selected --------------------------------------------------------------------------

    def _sync_view(self) -> None:
        """Tell the client what left (EXPUNGE, highest first) and what came (EXISTS)."""
        if self.folder is None:
            return
        with self.store.lock:
            folder = self.store.folders[self.folder.name]
            current = list(folder.uids)
        if folder is not self.folder:
            self.send("* BYE Mailbox was renumbered (UIDVALIDITY changed)")
            raise ConnectionAbortedError
        present = set(current)
        for index in range(len(self.view) - 1, -1, -1):
            if self.view[index] not in present:
                del self.view[index]
                self.send(f"* {index + 1} EXPUNGE")
        known = set(self.view)
        fresh = [uid for uid in current if uid not in known]
        if fresh:
            self.view.extend(fresh)
            self.send(f"* {len(self.view)} EXISTS")

    def _messages(self) -> list[tuple[int, int, GmMessage]]:
        """(sequence number, UID, message) of what this session sees and still exists."""
        assert self.folder is not None
        with self.store.lock:
            out = []
            for index, uid in enumerate(self.view):
                msgid = self.folder.uids.get(uid)
                if msgid is not None:
                    out.append((index + 1, uid, self.store.messages[msgid]))
            return out

    def cmd_uid_search(self, args: list[Token]) -> str | None:
        return self._search(args, by_uid=True)

    def cmd_search(self, args: list[Token]) -> str | None:
        return self._search(args, by_uid=False)

    def _search(self, args: list[Token], *, by_uid: bool) -> str | None:
        if self.folder is None:
            return "NO No mailbox selected"
        found = [(seq, uid) for seq, uid, m in self._messages() if _matches(args, seq, uid, m, self._highest())]
        self.send("* SEARCH" + "".join(f" {uid if by_uid else seq}" for seq, uid in found))
        return None

    def _highest(self) -> tuple[int, int]:
        return len(self.view), max(self.view, default=0)

    def cmd_uid_fetch(self, args: list[Token]) -> str | None:
        return self._fetch(args, by_uid=True)

    def cmd_fetch(self, args: list[Token]) -> str | None:
        return self._fetch(args, by_uid=False)

    def _fetch(self, args: list[Token], *, by_uid: bool) -> str | None:
        if self.folder is None:
            return "NO No mailbox selected"
        max_seq, max_uid = self._highest()
        ranges = number_set(str(args[0]), max_uid if by_uid else max_seq)
        items = [str(i).upper() for i in (args[1] if isinstance(args[1], list) else [args[1]])]
        since = _changed_since(args[2:])
        if by_uid and "UID" not in items:
            items.insert(0, "UID")
        if since is not None and "MODSEQ" not in items:
            items.append("MODSEQ")
        for seq, uid, message in self._messages():
            if in_set(uid if by_uid else seq, ranges) and (since is None or message.modseq > since):
                self.send(self._fetch_line(seq, uid, message, items))
        return None

    def _fetch_line(self, seq: int, uid: int, message: GmMessage, items: list[str]) -> bytes:
        assert self.folder is not None
        simple: list[str] = []
        literal: list[tuple[str, bytes]] = []
        for item in items:
            if item.startswith(("BODY", "RFC822")) and item != "RFC822.SIZE":
                name, content = self._section(item, message)
                literal.append((name, content))
            else:
                simple.append(_simple_item(item, uid, message, self.store.labels_seen_from(message, self.folder)))
        parts = [(" ".join(simple)).encode()]
        for name, content in literal:
            parts.append(f" {name} {{{len(content)}}}\r\n".encode() + content)
        return f"* {seq} FETCH (".encode() + b"".join(parts).lstrip() + b")"

    def _section(self, item: str, message: GmMessage) -> tuple[str, bytes]:
        name = item.replace("BODY.PEEK", "BODY")
        if name in ("BODY[]", "RFC822"):
            self.store.count_body(message.msgid, len(message.raw))
            return name, message.raw
        if name == "BODY[HEADER]":
            return name, header_block(message.raw)
        if name.startswith("BODY[HEADER.FIELDS"):
            fields = name[name.index("(") + 1:name.index(")")].split()
            return name, header_fields(message.raw, fields)
        raise ValueError(f"unsupported FETCH item {item}")


def _simple_item(item: str, uid: int, message: GmMessage, labels: list[str]) -> str:
    values: dict[str, Any] = {
        "UID": uid, "RFC822.SIZE": len(message.raw), "X-GM-MSGID": message.msgid, "X-GM-THRID": message.thrid,
        "X-GM-LABELS": "(" + " ".join(label_atom(label) for label in labels) + ")",
        "FLAGS": "(" + " ".join(sorted(message.flags)) + ")", "INTERNALDATE": imap_date(message.internal),
        "MODSEQ": f"({message.modseq})",
    }
    if item not in values:
        raise ValueError(f"unsupported FETCH item {item}")
    return f"{item} {values[item]}"


def _changed_since(modifiers: list[Token]) -> int | None:
    for modifier in modifiers:
        if isinstance(modifier, list) and len(modifier) == 2 and str(modifier[0]).upper() == "CHANGEDSINCE":
            return int(str(modifier[1]))
    return None


def _matches(args: list[Token], seq: int, uid: int, message: GmMessage, highest: tuple[int, int]) -> bool:
    tokens = [str(a) for a in args]
    i = 0
    while i < len(tokens):
        key = tokens[i].upper()
        if key == "ALL":
            i += 1
        elif key == "UID":
            if uid not in number_set(tokens[i + 1], highest[1]):
                return False
            i += 2
        elif key in ("LARGER", "SMALLER"):
            size, limit = len(message.raw), int(tokens[i + 1])
            if (size <= limit) if key == "LARGER" else (size >= limit):
                return False
            i += 2
        elif key in ("SINCE", "BEFORE"):
            day = dt.datetime.strptime(tokens[i + 1], "%d-%b-%Y").date()
            if (message.internal.date() < day) if key == "SINCE" else (message.internal.date() >= day):
                return False
            i += 2
        else:
            if seq not in number_set(tokens[i], highest[0]):
                return False
            i += 1
    return True

