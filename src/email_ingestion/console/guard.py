"""Who may do what, checked on the server for every request.

- No session (or an expired, logged-out or revoked one): pages redirect to the login form,
  anything else is refused with 401.
- A session whose user was removed from the users file, or whose role there changed, is
  ended on its next request.
- Every state-changing request (POST) needs a valid CSRF token tied to the session; POSTs
  other than logging in and out also need the admin role. What a page shows or hides does
  not matter: the endpoint itself refuses.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from flask import abort, g, redirect, request, url_for
from werkzeug.wrappers import Response

from email_ingestion.admin.common import Target
from email_ingestion.common.settings import ConsoleSettings
from email_ingestion.console.login_limit import LoginLimit
from email_ingestion.console.sessions import Session, SessionStore
from email_ingestion.console.users import UserDirectory

COOKIE = "email_ingest_console"
LOGIN_COOKIE = "email_ingest_console_login"  # double-submit CSRF token of the login form


def cookie_names(secure: bool) -> tuple[str, str]:
    """(session, login form) cookie names. Over HTTPS they carry the __Host- / __Secure-
    prefixes, which browsers accept only with Secure (and __Host- only for Path=/ and no
    Domain), so a sibling subdomain or a plain-HTTP page cannot plant a cookie of ours."""
    return (f"__Host-{COOKIE}", f"__Secure-{LOGIN_COOKIE}") if secure else (COOKIE, LOGIN_COOKIE)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Console:
    """What the request handlers need, built once in cli.py and passed to the app factory."""

    target: Target
    settings: ConsoleSettings
    max_unacked: int
    users: UserDirectory
    sessions: SessionStore
    login_limit: LoginLimit
    streams: tuple[str, ...] = ()  # WORKER_STREAMS: shown on the overview beside target's stream


def current() -> Session | None:
    session: Session | None = g.get("session")
    return session


def load_session(console: Console, now_ms: int) -> None:
    """Find the request's session and check it against the users file as it is now."""
    g.session = None
    # The overview's own refresh (?auto=1) must not keep an unattended session alive forever.
    token = request.cookies.get(cookie_names(console.settings.cookie_secure)[0])
    session = console.sessions.find(token, now_ms, renew=request.args.get("auto") != "1")
    if session is None:
        return
    user = console.users.get(session.user)
    if user is None or user.role != session.role:
        console.sessions.end(session)
        return
    g.session = session


def csrf_ok(session: Session) -> bool:
    sent = request.form.get("csrf_token", "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf_token.encode())


def login_required(view: Callable[P, R]) -> Callable[P, R | Response]:
    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        if current() is None:
            if request.method == "GET":
                return redirect(url_for("login", next=request.full_path.rstrip("?")))
            abort(401, "Not logged in, or the session has ended: log in again.")
        if request.method == "POST" and not csrf_ok(_session()):
            abort(403, "missing or wrong CSRF token")
        return view(*args, **kwargs)
    return wrapper


def admin_required(view: Callable[P, R]) -> Callable[P, R | Response]:
    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        session = current()
        if session is not None and session.role != "admin":
            abort(403, "this needs the admin role")
        return view(*args, **kwargs)
    return login_required(wrapper)


def _session() -> Session:
    session = current()
    assert session is not None  # login_required checked it
    return session


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no //host, no scheme, no CR/LF)."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 32 for c in target)):
        return "/"
    return target


def security_headers(response: Response, *, https: bool) -> Response:
    """A CSP without inline script (all script and style come from /static), no framing."""
    headers: dict[str, Any] = {
        "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response
