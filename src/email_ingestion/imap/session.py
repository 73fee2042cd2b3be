"""One IMAP connection to one mailbox: connect, authenticate, examine, search, fetch, idle.

Every imapclient/socket failure leaves this module as an ImapError subclass, so callers
decide between reconnecting (ImapConnectionError), slowing down (ImapThrottledError) and
stopping (AuthError, ImapProtocolError).
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.response_parser import parse_fetch_response

from email_ingestion import __version__
from email_ingestion.common.errors import (
    AuthError,
    ImapConnectionClosedError,
    ImapConnectionError,
    ImapProtocolError,
    ImapThrottledError,
    SettingsError,
    TlsVerificationError,
)
from email_ingestion.common.settings import ImapSettings
from email_ingestion.common.text import to_text
from email_ingestion.imap.fetch_response import parse_bulk_fetch
from email_ingestion.imap.fetched import FetchedMessage, fetched_messages
from email_ingestion.imap.folders import mailbox_not_found, names_missing_mailbox
from email_ingestion.imap.special_use import Folder, is_special_use, resolve
from email_ingestion.imap.transport_probe import plaintext_on_tls, tls_on_plaintext

log = logging.getLogger(__name__)

# Gmail: [THROTTLED], [OVERQUOTA], "Too many simultaneous connections"; RFC 5530 codes
# [UNAVAILABLE], [LIMIT], [INUSE] say the same from other servers.
_THROTTLE = re.compile(r"\[(THROTTLED|OVERQUOTA|UNAVAILABLE|LIMIT|INUSE)\]|too many simultaneous|"
                       r"too many connections|rate limit|try again later", re.I)
GMAIL_CAPABILITY = b"X-GM-EXT-1"
# Gmail also slows clients down on answers that succeed: "A1 OK Success [THROTTLED]", and
# may say so untagged ("* OK [THROTTLED]", a "* NO" warning), during IDLE too. Status lines
# only (a FETCH line can quote anything: a label, a file name); a tagged NO fails its
# command and is handled as an error (imap_errors), not here.
_THROTTLED_STATUS = re.compile(rb"(?:\* (?:OK|NO|BAD)|[A-Za-z0-9.]+ OK)\b[^\r\n]*\[THROTTLED\]", re.I)
# Untagged data a server may send at any time (RFC 3501 §5.3, §7): what says the mailbox changed.
_CHANGE_LINE = re.compile(rb"\* (\d+) (EXISTS|EXPUNGE)\b", re.I)
_UNSOLICITED = ("EXISTS", "EXPUNGE", "RECENT", "FETCH")
THROTTLED_OK_PAUSE_S = 5.0  # pause after a successful but throttled command, doubling up to the max
THROTTLED_OK_MAX_PAUSE_S = 60.0
# idle_check() returns [] at once when the socket is readable but gives no line: the peer
# closed it (imapclient swallows the EOF). This many such returns in a row = connection lost.
IDLE_EMPTY_WAKEUPS = 3
# RFC 2971 ID fields sent when the server offers ID (Google asks clients to identify).
CLIENT_ID = {"name": "email-ingestion", "version": __version__, "vendor": "email-ingestion",
             "support-url": "https://github.com/email-ingestion"}
_ESEARCH_MIN = re.compile(rb"\bMIN (\d+)", re.I)


class Authenticator(Protocol):
    def login(self, client: IMAPClient, user: str) -> None: ...

    def on_rejected(self) -> bool:
        """Called after the server refused the credentials; True means try once more."""
        ...


@dataclass(frozen=True)
class MailboxStatus:
    uidvalidity: int
    uidnext: int | None
    exists: int
    highest_modseq: int | None = None  # CONDSTORE (RFC 7162), where enabled (Gmail)


@contextlib.contextmanager
def imap_errors(action: str) -> Iterator[None]:
    """Translate what imapclient, imaplib and sockets raise into our error tree."""
    try:
        yield
    except (ImapConnectionError, ImapProtocolError, AuthError, SettingsError):
        raise
    except ssl.SSLCertVerificationError as exc:
        raise TlsVerificationError(
            f"{action}: TLS certificate verification failed ({exc.verify_message}): check IMAP_HOST, "
            "or IMAP_CA_FILE for a private CA") from None
    except LoginError as exc:
        if _THROTTLE.search(str(exc)):
            raise ImapThrottledError(f"{action}: server is throttling: {exc}") from exc
        raise AuthError(f"{action}: the server refused the credentials: {exc}") from exc
    except imaplib.IMAP4.abort as exc:
        # "* BYE [UNAVAILABLE]" arrives as an abort.
        if _THROTTLE.search(str(exc)):
            raise ImapThrottledError(f"{action}: server is throttling: {exc}") from exc
        raise ImapConnectionError(f"{action}: connection failed: {type(exc).__name__}: {exc}") from exc
    except (TimeoutError, OSError, EOFError) as exc:
        raise ImapConnectionError(f"{action}: connection failed: {type(exc).__name__}: {exc}") from exc
    except (IMAPClientError, imaplib.IMAP4.error) as exc:
        if _THROTTLE.search(str(exc)):
            raise ImapThrottledError(f"{action}: server is throttling: {exc}") from exc
        raise ImapProtocolError(f"{action}: {exc}") from exc


def tls_context(settings: ImapSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ImapSession:
    """A connected, authenticated session with one mailbox examined (read-only)."""

    def __init__(self, *, settings: ImapSettings, authenticator: Authenticator,
                 on_throttled: Callable[[], None] = lambda: None,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.settings = settings
        self._auth = authenticator
        self._client: IMAPClient | None = None
        self.capabilities: frozenset[bytes] = frozenset()
        self.status: MailboxStatus | None = None
        self._on_throttled = on_throttled
        self._wait = wait or threading.Event().wait  # sleeps; True early when asked to stop
        self._throttled_answers: list[bytes] = []  # status lines that said [THROTTLED], not yet acted on
        self._throttle_pause_s = THROTTLED_OK_PAUSE_S
        self.folder = Folder(settings.mailbox)  # the server's folder IMAP_MAILBOX means (after connect)

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise ImapConnectionError("not connected")
        return self._client

    @property
    def is_gmail(self) -> bool:
        return GMAIL_CAPABILITY in self.capabilities

    @property
    def can_idle(self) -> bool:
        return b"IDLE" in self.capabilities and self.settings.idle

    def connect(self) -> MailboxStatus:
        s = self.settings
        with imap_errors(f"connect to {s.host}:{s.effective_port}"):
            client = self._open()
            self._client = client
            client.normalise_times = False
            self._throttled_answers.clear()  # a new connection: the runner's backoff covered the old one
            _watch_status_lines(client, self._throttled_answers)
            if s.starttls:
                client.starttls(tls_context(s))
        self._login()
        with imap_errors("capabilities"):
            self.capabilities = frozenset(self.client.capabilities())
        self._prepare()
        return self.examine()

    def _prepare(self) -> None:
        """After login: identify ourselves (RFC 2971, as Google asks), turn on CONDSTORE on
        Gmail (label changes), and find the folder a SPECIAL-USE name means (RFC 6154)."""
        with imap_errors("ID"):
            if b"ID" in self.capabilities:
                self.client.id_(CLIENT_ID)
        with imap_errors("ENABLE CONDSTORE"):
            if self.is_gmail and b"CONDSTORE" in self.capabilities:
                self.client.enable("CONDSTORE")
        if self.is_gmail or is_special_use(self.settings.mailbox):
            with imap_errors("LIST"):
                self.folder = resolve(self.settings.mailbox, self.client.list_folders())

    def _open(self) -> IMAPClient:
        """The TCP (and TLS) connection with its greeting read; a mismatch of IMAP_SSL and
        the port stops with a hint instead of being retried forever."""
        s = self.settings
        timeout = SocketTimeout(connect=s.timeout_seconds, read=s.timeout_seconds)
        context = tls_context(s) if s.uses_tls else None
        try:
            return IMAPClient(s.host, port=s.effective_port, ssl=s.ssl, ssl_context=context, timeout=timeout)
        except ssl.SSLError as exc:
            mismatch = tls_on_plaintext(exc, s.host, s.effective_port)
            if mismatch is None:
                raise
            raise mismatch from None
        except (TimeoutError, imaplib.IMAP4.abort, EOFError, ConnectionResetError):
            found = None if s.ssl else plaintext_on_tls(s.host, s.effective_port, s.timeout_seconds)
            if found is None:
                raise
            raise found from None

    def _login(self) -> None:
        for attempt in (1, 2):
            try:
                with imap_errors(f"login as {self.settings.user}"):
                    self._auth.login(self.client, self.settings.user)
                return
            except AuthError:
                if attempt == 2 or not self._auth.on_rejected():
                    raise

    def examine(self) -> MailboxStatus:
        """Select the mailbox read-only (EXAMINE): nothing is marked \\Seen or loses \\Recent."""
        mailbox = self.folder.name
        try:
            with imap_errors(f"examine {mailbox}"):
                info = self.client.select_folder(mailbox, readonly=True)
        except ImapProtocolError as exc:
            if not names_missing_mailbox(str(exc)):
                raise
            with imap_errors("LIST"):
                folders = self.client.list_folders()
            raise mailbox_not_found(mailbox, folders, str(exc)) from None
        self._take_unsolicited()  # the EXISTS and RECENT of this answer: read above, not news
        self._after_command()
        self.status = MailboxStatus(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(info[b"UIDNEXT"]) if b"UIDNEXT" in info else None,
            exists=int(info.get(b"EXISTS", 0)),
            highest_modseq=int(info[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in info else None,
        )
        return self.status

    @property
    def can_esearch(self) -> bool:
        return b"ESEARCH" in self.capabilities

    def uids_in(self, first_uid: int, last_uid: int, *criteria: Any) -> list[int]:
        """UIDs in first_uid..last_uid matching the extra criteria, ascending.

        Callers keep the range short (windows.py): the reply is one line, and imaplib
        refuses a line over 1,000,000 bytes."""
        if last_uid < max(first_uid, 1):
            return []
        with imap_errors("UID SEARCH"):
            found = self.client.search(["UID", f"{max(first_uid, 1)}:{last_uid}", *criteria])
        self._after_command()
        return sorted(uid for uid in found if first_uid <= uid <= last_uid)

    def first_uid_in(self, first_uid: int, last_uid: int) -> int | None:
        """The lowest UID in the range (RFC 4731 ESEARCH MIN: one short answer however
        many messages match), None when there is none. Needs `can_esearch`."""
        if last_uid < max(first_uid, 1):
            return None
        with imap_errors("UID SEARCH RETURN (MIN)"):
            imap = self.client._imap  # noqa: SLF001 - imapclient does not parse ESEARCH
            typ, data = imap.uid("SEARCH", "RETURN", "(MIN)", "UID", f"{max(first_uid, 1)}:{last_uid}")
            answers = imap.untagged_responses.pop("ESEARCH", [])
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID SEARCH RETURN (MIN) failed: {data!r}"[:300])
        found = [int(m.group(1)) for a in answers if (m := _ESEARCH_MIN.search(bytes(a or b"")))]
        return min(found) if found else None

    def lowest_uid(self) -> int | None:
        """The UID of message 1 (the lowest), None when the mailbox is empty; for servers
        without ESEARCH, to skip a gap before the first message."""
        if self.status is not None and not self.status.exists:
            return None
        with imap_errors("FETCH 1 (UID)"):
            typ, data = self.client._imap.fetch("1", "(UID)")  # noqa: SLF001 - by sequence number
            if typ != "OK":
                raise imaplib.IMAP4.error(f"FETCH failed: {data!r}"[:300])
            found = parse_fetch_response([d for d in data if d is not None], normalise_times=False, uid_is_key=False)
        return next((int(v[b"UID"]) for seq, v in found.items() if seq == 1 and b"UID" in v), None)

    def sizes_in(self, first_uid: int, last_uid: int) -> dict[int, int]:
        """UID -> RFC822.SIZE of the messages in a short range: the UIDs and which are large
        in one round trip instead of two SEARCHes (an IDLE wake-up's usual range)."""
        if last_uid < max(first_uid, 1):
            return {}
        with imap_errors("UID FETCH RFC822.SIZE"):
            typ, data = self.client._imap.uid("FETCH", f"{max(first_uid, 1)}:{last_uid}", "(UID RFC822.SIZE)")  # noqa: SLF001
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID FETCH failed: {data!r}"[:300])
            found = parse_fetch_response([d for d in data if d is not None], normalise_times=False, uid_is_key=True)
        # An unsolicited FETCH (a flag change) has no UID and is keyed by sequence number.
        return {uid: int(data[b"RFC822.SIZE"]) for uid, data in found.items()
                if first_uid <= uid <= last_uid and b"RFC822.SIZE" in data}

    def highest_uid(self) -> int:
        """The highest UID in the mailbox, 0 when empty (for servers that omit UIDNEXT)."""
        with imap_errors("UID SEARCH UID *"):
            found = self.client.search(["UID", "*"]) if self.status is None or self.status.exists else []
        self._after_command()
        return max(found, default=0)

    def fetch(self, uids: Sequence[int], items: Sequence[str]) -> dict[int, FetchedMessage]:
        """UID FETCH: one typed record per message the server still has."""
        if not uids:
            return {}
        with imap_errors(f"UID FETCH of {len(uids)} messages"):
            if items and items[-1] == "BODY.PEEK[]":
                fetched = self._bulk_fetch(uids, items)
            else:
                wanted = set(uids)
                fetched = {uid: v for uid, v in self.client.fetch(list(uids), list(items)).items() if uid in wanted}
        self._after_command()
        return fetched_messages(fetched)

    def fetch_changed(self, last_uid: int, items: Sequence[str], changed_since: int) -> dict[int, dict[bytes, Any]]:
        """UID FETCH 1:last_uid of the messages whose mod-sequence is above `changed_since`
        (RFC 7162 CHANGEDSINCE; Gmail's only way to learn of label changes: IDLE is silent)."""
        if last_uid < 1:
            return {}
        with imap_errors("UID FETCH CHANGEDSINCE"):
            imap = self.client._imap  # noqa: SLF001 - imapclient cannot give a range with modifiers
            typ, data = imap.uid("FETCH", f"1:{last_uid}", "(" + " ".join(["UID", "MODSEQ", *items]) + ")",
                                 f"(CHANGEDSINCE {changed_since})")
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID FETCH CHANGEDSINCE failed: {data!r}"[:300])
            found = parse_fetch_response([d for d in data if d is not None], normalise_times=False, uid_is_key=True)
        self._after_command()
        return {uid: values for uid, values in found.items() if 1 <= uid <= last_uid}

    def _after_command(self) -> None:
        """Slow down after answers that succeeded but said [THROTTLED] (Gmail), tagged or
        untagged: each is counted, and each doubles the pause (5 s, 10 s, ... up to
        THROTTLED_OK_MAX_PAUSE_S). One pause per command (or IDLE), as long as its last
        throttled answer asks: many answers in one IDLE never add up to more than the cap.
        A command answered without one resets the pause."""
        if not self._throttled_answers:
            self._throttle_pause_s = THROTTLED_OK_PAUSE_S
            return
        answers = len(self._throttled_answers)
        self._throttled_answers.clear()
        pause_s = self._throttle_pause_s
        for _ in range(answers):
            self._on_throttled()
            pause_s = self._throttle_pause_s
            self._throttle_pause_s = min(THROTTLED_OK_MAX_PAUSE_S, self._throttle_pause_s * 2)
        log.warning("server answered [THROTTLED]; slowing down", extra={"answers": answers, "pause_s": pause_s})
        self._wait(pause_s)

    def _bulk_fetch(self, uids: Sequence[int], items: Sequence[str]) -> dict[int, dict[bytes, Any]]:
        """UID FETCH of whole messages through imaplib (imapclient's `_imap`), parsed by the
        fast parser in fetch_response.py, with imapclient's parser as the fallback."""
        imap = self.client._imap  # noqa: SLF001 - the raw reply is what makes the fast path possible
        typ, data = imap.uid("FETCH", uid_set(uids), "(" + " ".join(items) + ")")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"UID FETCH failed: {data!r}"[:300])
        parsed = parse_bulk_fetch(data)
        if parsed is None:
            parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=True)
        wanted = set(uids)
        return {uid: values for uid, values in parsed.items() if uid in wanted}

    def wait_for_change(self, timeout_s: float, should_stop: Any) -> bool:
        """IDLE until the server reports a change, `timeout_s` passes or `should_stop()`.

        True when the server announced something (EXISTS/EXPUNGE/FETCH), also when it did
        so between commands: then there is no IDLE at all. Ending IDLE needs the server's
        answer to DONE within the read timeout, which is how a connection that died
        silently is noticed.
        """
        if self._take_unsolicited():
            return True
        with imap_errors("IDLE"):
            changed = self._start_idle()
            try:
                if not changed:
                    changed = self._idle_until_change(timeout_s, should_stop)
            finally:
                _, responses = self.client.idle_done()
                changed = changed or any(_is_change(r) for r in responses)
        self._take_unsolicited()
        self._after_command()
        return changed

    def _start_idle(self) -> bool:
        """Sends IDLE and reads up to the server's `+`. Untagged data sent before it (a
        server may push `* n EXISTS` at any time, RFC 3501 §5.3) is absorbed, not taken for
        the answer (imapclient's idle() raises on it); True when it announced a change."""
        imap = self.client._imap  # noqa: SLF001 - imapclient's idle() cannot absorb untagged data
        tag = imap._command("IDLE")  # noqa: SLF001
        self.client._idle_tag = tag  # noqa: SLF001 - idle_done() ends the IDLE by this tag
        changed = False
        while (line := imap._get_response()) is not None:  # noqa: SLF001 - None: the continuation
            if imap.tagged_commands.get(tag):
                typ, data = imap.tagged_commands.pop(tag)
                raise imaplib.IMAP4.error(f"IDLE refused: {typ} {to_text(data[0] if data else b'')}"[:300])
            if line.upper().startswith(b"* BYE"):
                _raise_on_bye([(b"BYE", line[6:])])
            found = _CHANGE_LINE.match(line)
            changed = changed or (found is not None and self._is_news(found.group(2).upper(), [found.group(1)]))
        return changed

    def _idle_until_change(self, timeout_s: float, should_stop: Any) -> bool:
        deadline = time.monotonic() + timeout_s
        empty_wakeups = 0
        while not should_stop() and time.monotonic() < deadline:
            slice_s = min(1.0, max(0.05, deadline - time.monotonic()))
            started = time.monotonic()
            responses = self.client.idle_check(timeout=slice_s)
            _raise_on_bye(responses)
            if any(_is_change(r) for r in responses):
                return True
            early_empty = not responses and time.monotonic() - started < slice_s / 2
            empty_wakeups = empty_wakeups + 1 if early_empty else 0
            if empty_wakeups >= IDLE_EMPTY_WAKEUPS:
                # Cyrus closes without BYE on shutdown (issue 9 §8): without this the
                # loop spins on the dead socket until the IDLE timeout.
                raise ImapConnectionClosedError("IDLE: the server closed the connection")
        return False

    def _take_unsolicited(self) -> bool:
        """Drops the untagged data imaplib kept from between and around commands (it would
        otherwise pile up for the life of the connection); True when it announced a change."""
        kept = self.client._imap.untagged_responses  # noqa: SLF001
        found = {name: kept.pop(name) for name in _UNSOLICITED if name in kept}
        return any(self._is_news(name.encode(), values) for name, values in found.items())

    def _is_news(self, name: bytes, values: list[Any]) -> bool:
        """An EXPUNGE, or an EXISTS with another count than the last EXAMINE gave: some
        servers repeat the count unasked (a Gmail-like one after every command), and a
        repeat taken for news would start a pass after every pass. Flag changes (FETCH)
        are not news to a producer."""
        if name == b"EXPUNGE":
            return bool(values)
        if name != b"EXISTS":
            return False
        known = self.status.exists if self.status is not None else None
        counts = [re.match(rb"\d+", value if isinstance(value, bytes) else to_text(value).encode()) for value in values]
        return any(count is None or int(count.group()) != known for count in counts)

    def close(self) -> None:
        """Log out politely when possible; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            with contextlib.suppress(Exception):
                client.shutdown()


def uid_set(uids: Sequence[int]) -> str:
    """An IMAP sequence set with runs collapsed: [1,2,3,7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    runs: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:] + [0]:
        if uid == prev + 1:
            prev = uid
            continue
        runs.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    return ",".join(runs)


def _watch_status_lines(client: IMAPClient, throttled: list[bytes]) -> None:
    """Every line the server sends passes imaplib's _get_line (imapclient's IDLE reads too;
    literals do not): keep the status lines, tagged or not, that say [THROTTLED]."""
    imap = client._imap  # noqa: SLF001 - the only place every answer passes
    get_line = imap._get_line  # noqa: SLF001

    def watched() -> bytes:
        line: bytes = get_line()
        if _THROTTLED_STATUS.match(line):
            throttled.append(line)
        return line

    imap._get_line = watched  # noqa: SLF001


def _raise_on_bye(responses: list[Any]) -> None:
    """An untagged BYE while idling: the server is going away, maybe asking us to slow down."""
    for response in responses:
        if isinstance(response, tuple) and response and response[0] == b"BYE":
            text = " ".join(to_text(part) for part in response[1:])
            if _THROTTLE.search(text):
                raise ImapThrottledError(f"IDLE: server is throttling: BYE {text}"[:300])
            raise ImapConnectionClosedError(f"IDLE: the server said goodbye: BYE {text}"[:300])


def _is_change(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in (b"EXISTS", b"EXPUNGE", b"FETCH")
