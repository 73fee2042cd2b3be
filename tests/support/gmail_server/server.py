"""A Gmail-like IMAP server on loopback for the test suite (issue 20).

Why our own and not hoodiecrow-imap (npm): hoodiecrow (last release 2.1.0, unmaintained)
keeps one message list per folder, so one X-GM-MSGID across INBOX, labels and All Mail,
labels as views that follow label changes, and CONDSTORE mod-sequences would all be
plugin code on top of a model that is not Gmail's; here the model *is* Gmail's (store.py)
and the protocol is the small subset the producer speaks. It needs nothing beyond Python.

Emulated: X-GM-EXT-1 (X-GM-MSGID, X-GM-THRID, X-GM-LABELS, with a folder's own label left
out of X-GM-LABELS), labels as folders, `[Gmail]` or `[Google Mail]` \\Noselect parent,
SPECIAL-USE (RFC 6154) in LIST, ID (RFC 2971), ENABLE and CONDSTORE (MODSEQ,
HIGHESTMODSEQ, CHANGEDSINCE; no QRESYNC, as Gmail), IDLE (EXISTS/EXPUNGE only: label
changes are not announced, as on Gmail), UID SEARCH (UID ranges, ALL, LARGER, SINCE),
UID FETCH, FETCH by sequence number, STATUS, a UIDVALIDITY change, `OK [THROTTLED]`
answers. Not emulated: TLS, XOAUTH2 (LOGIN only), APPEND/STORE/COPY/MOVE (tests change
labels through the store), BODYSTRUCTURE and partial fetches, ESEARCH, the per-account
download and connection limits (the producer's own accounting is what is tested).
"""

from __future__ import annotations

import select
import socketserver
import threading

from tests.support.gmail_server.protocol import Token, literal_size, tokenize
from tests.support.gmail_server.session import Session
from tests.support.gmail_server.store import GmailStore

CAPABILITIES = ("IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS "
                "COMPRESS=DEFLATE ENABLE MOVE CONDSTORE LITERAL+ SPECIAL-USE")


class _Handler(socketserver.StreamRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        session = Session(self.server.gmail, self.server.users, self._send, self._readline, self._readable)
        self._send("* OK Gimap ready for requests from 127.0.0.1")
        while not self.server.stopping.is_set():
            read = self._command()
            if read is None:
                return
            if not session.run(*read):
                return

    def _send(self, text: str | bytes) -> None:
        data = text if isinstance(text, bytes) else text.encode()
        try:
            self.wfile.write(data + (b"" if data.endswith(b"\r\n") else b"\r\n"))
            self.wfile.flush()
        except OSError:
            pass

    def _readable(self, timeout_s: float) -> bool:
        return bool(select.select([self.connection], [], [], timeout_s)[0])

    def _readline(self) -> bytes:
        return self.rfile.readline(1_000_000)

    def _command(self) -> tuple[str, str, list[Token]] | None:
        line = self._readline()
        if not line:
            return None
        literals: list[bytes] = []
        while (size := literal_size(line)) is not None:
            if not line.rstrip(b"\r\n").endswith(b"+}"):
                self._send("+ go ahead")
            literals.append(self.rfile.read(size))
            line += self._readline()
        tokens = tokenize(line, literals)
        if len(tokens) < 2:
            self._send("* BAD empty command")
            return "", "NOOP", []
        return str(tokens[0]), str(tokens[1]).upper(), tokens[2:]


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, gmail: GmailStore, users: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gmail = gmail
        self.users = users
        self.stopping = threading.Event()


class GmailServer:
    """Started by a fixture; `store` is the account's mail, changed by tests directly."""

    def __init__(self, *, users: dict[str, str], localised: bool = False) -> None:
        self.store = GmailStore(localised=localised)
        self._server = _TcpServer(self.store, users)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gmail-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> GmailServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

