"""Telling a TLS port from a plaintext one, for the one-line hint when IMAP_SSL does not
match the port: an IMAPS client on a plaintext port fails its handshake with "wrong version
number" at once, a plaintext client on a TLS port waits in vain for a greeting. Neither
passes by retrying, so both stop the process (exit 2) instead of backing off forever."""

from __future__ import annotations

import socket
import ssl

from email_ingestion.common.errors import TransportMismatchError

# OpenSSL's reasons when the peer's first bytes are not a TLS record (a plaintext greeting).
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG",
                    "HTTP_REQUEST", "UNEXPECTED_EOF")


def tls_on_plaintext(exc: BaseException, host: str, port: int) -> TransportMismatchError | None:
    """The error to stop with when a TLS handshake met a plaintext server, else None."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLCertVerificationError):
        return None
    reason = f"{exc.reason or ''} {exc}".upper().replace(" ", "_")
    if not any(r in reason for r in _NOT_TLS_REASONS) or not _greets_in_plaintext(host, port):
        return None
    return TransportMismatchError(
        f"IMAP server {host}:{port} speaks plaintext IMAP, not TLS: set IMAP_SSL=false with IMAP_STARTTLS=true "
        "(or IMAP_PORT=993 for implicit TLS)")


def plaintext_on_tls(host: str, port: int, timeout_s: float) -> TransportMismatchError | None:
    """The error to stop with when a plaintext connect got no greeting from a TLS port, else None."""
    if not _completes_tls_handshake(host, port, timeout_s):
        return None
    return TransportMismatchError(
        f"IMAP server {host}:{port} expects TLS from the first byte (implicit TLS): set IMAP_SSL=true "
        "(or IMAP_PORT=143 with IMAP_STARTTLS=true)")


def _greets_in_plaintext(host: str, port: int, timeout_s: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            return sock.recv(16).upper().startswith(b"* ")
    except OSError:
        return False


def _completes_tls_handshake(host: str, port: int, timeout_s: float) -> bool:
    # Only "is this TLS at all": verification is left to the real connection, which keeps it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False
