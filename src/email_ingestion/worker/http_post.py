"""One HTTP POST bounded as a whole (issue 19 item 8), for the webhook handler.

A socket timeout bounds each wait for a byte, not the call: an endpoint that answers 200 and
then trickles its body (or trickles its headers, or its TLS handshake) kept a call going
until HANDLER_TIMEOUT_SECONDS ended the whole worker. Here one deadline covers connect, TLS,
request, headers and body: every socket operation gets the time left as its timeout, and a
watchdog timer shuts the socket down at the deadline, which ends any read in progress.

The response body is read only to keep the connection for the next call, and only up to
MAX_RESPONSE_BYTES: a longer body, or one not finished by the deadline, closes the
connection instead (a 256 MiB body cost the worker 500 MiB before). The outcome is the
status line, which is final once the endpoint has sent it.

Written on http.client rather than requests: requests' timeouts are per socket operation,
and neither it nor urllib3 lets a caller end a call in progress. The connection is kept
per thread (each stream's loop has its own) and per origin; one that the endpoint closed
while idle is replaced once, at once. HTTP(S)_PROXY is not used. Name resolution cannot be
interrupted; it runs in a thread that the call stops waiting for at the deadline.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 64 * 1024
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


@dataclass(frozen=True)
class Answer:
    status: int
    location: str | None


class CallTimedOut(Exception):
    """The endpoint did not send its status within the deadline."""


class TlsNotTrusted(Exception):
    """The endpoint's TLS certificate did not verify (untrusted, expired, wrong host name)."""


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification against `ca_file`, else the CA bundle requests used before (certifi)."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with requests
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Watchdog:
    """Shuts the connection's socket down at the deadline, ending whatever waits on it."""

    def __init__(self, conn: http.client.HTTPConnection, remaining_s: float) -> None:
        self.conn = conn
        self.fired = False
        self._timer = threading.Timer(max(0.0, remaining_s), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def cancel(self) -> None:
        self._timer.cancel()


class BoundedPoster:
    """POST with one deadline for the whole call; connections kept per thread and origin."""

    def __init__(self, *, timeout_s: float, context: ssl.SSLContext) -> None:
        self.timeout_s = timeout_s
        self._context = context
        self._local = threading.local()

    def deadline(self) -> float:
        """The monotonic instant a call starting now must end by."""
        return time.monotonic() + self.timeout_s

    def post(self, url: str, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
        """POST by `deadline` (from deadline(); several hops of one call share it)."""
        for attempt in (1, 2):
            conn, reused = self._connection(url, deadline)
            try:
                return self._exchange(conn, url, body, headers, deadline)
            except _STALE:
                self._drop(url)
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(self, conn: http.client.HTTPConnection, url: str, body: bytes, headers: dict[str, str],
                  deadline: float) -> Answer:
        watchdog = _Watchdog(conn, deadline - time.monotonic())
        try:
            try:
                conn.request("POST", _target(url), body=body, headers=headers)
                response = conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                self._drop(url)
                raise TlsNotTrusted(exc.verify_message or str(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                if watchdog.fired or time.monotonic() >= deadline:
                    self._drop(url)
                    raise CallTimedOut(f"no answer within {self.timeout_s:g} s") from None
                if not isinstance(exc, _STALE):
                    self._drop(url)
                raise
            if watchdog.fired:  # the shutdown reads as the end of the headers: not an answer to trust
                self._drop(url)
                raise CallTimedOut(f"no complete answer within {self.timeout_s:g} s")
            answer = Answer(response.status, response.getheader("Location"))
            if not _drained(response) or watchdog.fired or response.will_close:
                self._drop(url)
            return answer
        finally:
            watchdog.cancel()

    def _connection(self, url: str, deadline: float) -> tuple[http.client.HTTPConnection, bool]:
        pool: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        key = _origin(url)
        remaining_s = max(0.001, deadline - time.monotonic())
        conn = pool.get(key)
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(remaining_s)
            return conn, True
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        conn = (http.client.HTTPSConnection(host, port, timeout=remaining_s, context=self._context)
                if parts.scheme == "https" else http.client.HTTPConnection(host, port, timeout=remaining_s))
        # http.client's own seam for making the socket (CPython's tests use it too).
        conn._create_connection = _connector(deadline)  # type: ignore[attr-defined]
        pool[key] = conn
        return conn, False

    def _drop(self, url: str) -> None:
        conn = self._local.__dict__.get("pool", {}).pop(_origin(url), None)
        if conn is not None:
            conn.close()


def _connector(deadline: float) -> Callable[..., socket.socket]:
    """socket.create_connection with name resolution under the deadline too."""
    def connect(address: tuple[str, int], *_: object, **__: object) -> socket.socket:
        last: OSError | None = None
        for family, kind, proto, _name, sockaddr in _resolve(address[0], address[1], deadline):
            sock = socket.socket(family, kind, proto)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(f"no address for {address[0]}")
    return connect


def _resolve(host: str, port: int, deadline: float) -> list[Any]:
    """getaddrinfo by `deadline`: it cannot be interrupted, so it runs in a daemon thread that
    is left to the system resolver's own timeouts when the deadline passes."""
    found: dict[str, Any] = {}

    def run() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc
    thread = threading.Thread(target=run, name="webhook-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise CallTimedOut(f"the name {host} was not resolved in time")
    if "error" in found:
        raise found["error"]
    return list(found["addresses"])


def _drained(response: http.client.HTTPResponse) -> bool:
    """Read the body if it is small and arrives in time; True when all of it was read."""
    try:
        response.read(MAX_RESPONSE_BYTES)
    except (OSError, http.client.HTTPException):
        return False
    return response.isclosed()


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port}"
