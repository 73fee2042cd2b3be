"""Every console endpoint's authentication and authorisation, over HTTP against real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.console.conftest import ADMIN, ADMIN_PW, DLQ, STREAM, VIEWER, VIEWER_PW, csrf_token, login, write_users

LETTER_FIELDS = {"payload": json.dumps({"account": "a@example.com", "mailbox": "INBOX", "uid": 7,
                                        "message_id": "<x7@example.org>", "subject": "secret subject"}),
                 "reason": "permanent", "error_type": "PermanentError", "error_message": "secret error text",
                 "traceback": "Traceback: secret", "attempts": "1", "original_id": "1-1", "dead_at_ms": "1764648152300"}


def add_letter(client: Any, **fields: str) -> str:
    return str(client.xadd(DLQ, {**LETTER_FIELDS, **fields}).decode())


# (method, path, who may use it); every route of the app must be listed (test below).
def endpoints(letter_id: str) -> list[tuple[str, str, str]]:
    return [
        ("GET", "/", "viewer"),
        ("GET", "/dlq", "viewer"),
        ("GET", f"/dlq/letter/{letter_id}", "viewer"),
        ("GET", "/dlq/plan?action=replay&scope=all&value=", "admin"),
        ("POST", "/dlq/act", "admin"),
        ("GET", "/search?q=%3Cx7%40example.org%3E", "viewer"),
        ("GET", "/audit", "viewer"),
        ("POST", "/logout", "viewer"),
    ]


PUBLIC = {"/login", "/healthz", "/static/<path:filename>"}
ACT_FORM = {"action": "replay", "scope": "all", "value": ""}


def test_every_route_is_in_the_table(app):
    """A new endpoint cannot slip in without an authorisation test: every rule is listed here."""
    listed = {path.split("?")[0].replace("/dlq/letter/1-1", "/dlq/letter/<entry_id>") for _, path, _ in endpoints("1-1")}
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert rules - PUBLIC - listed == set()


def test_without_a_session_pages_redirect_and_posts_are_refused(app, redis_client):
    """No credentials: every GET page redirects to the login form, every POST is 401, nothing changes."""
    letter = add_letter(redis_client)
    client = app.test_client()
    for method, path, _ in endpoints(letter):
        response = client.open(path, method=method, data=ACT_FORM)
        if method == "GET":
            assert response.status_code == 302 and response.headers["Location"].startswith("/login"), path
        else:
            assert response.status_code == 401, path
    assert redis_client.xlen(DLQ) == 1 and redis_client.xlen(STREAM) == 0


def test_a_viewer_reads_but_cannot_act(as_user, redis_client):
    """A viewer gets the read-only pages; the plan page and every state change are 403, with or
    without a valid CSRF token, whatever the page shows."""
    letter = add_letter(redis_client)
    viewer = as_user(VIEWER)
    token = csrf_token(viewer)
    for method, path, who in endpoints(letter):
        if path == "/logout":
            continue
        response = viewer.open(path, method=method, data={**ACT_FORM, "csrf_token": token})
        assert response.status_code == (200 if who == "viewer" else 403), path
    refused = viewer.post("/dlq/act", data={"action": "purge", "scope": "one", "value": letter, "csrf_token": token})
    assert refused.status_code == 403
    assert redis_client.xlen(DLQ) == 1 and redis_client.xlen(STREAM) == 0
    assert redis_client.xlen("email_ingestion:console:audit") == 0


def test_an_admin_post_needs_the_csrf_token(as_user, redis_client):
    """An admin's POST without the session's CSRF token, or with another session's, is 403 and changes nothing."""
    letter = add_letter(redis_client)
    admin, other = as_user(ADMIN), as_user(ADMIN)
    assert admin.post("/dlq/act", data=ACT_FORM).status_code == 403
    assert admin.post("/dlq/act", data={**ACT_FORM, "csrf_token": csrf_token(other)}).status_code == 403
    assert admin.post("/dlq/act", data={**ACT_FORM, "csrf_token": ""}).status_code == 403
    assert redis_client.xlen(DLQ) == 1
    done = admin.post("/dlq/act", data={**ACT_FORM, "csrf_token": csrf_token(admin)})
    assert done.status_code == 200 and redis_client.xlen(DLQ) == 0 and redis_client.xlen(STREAM) == 1
    assert letter not in {e.decode() for e, _ in redis_client.xrange(DLQ)}


def test_an_admin_reaches_every_endpoint(as_user, redis_client):
    """The admin role gets 200 from every page (logout last)."""
    letter = add_letter(redis_client)
    admin = as_user(ADMIN)
    for method, path, _ in endpoints(letter):
        data = {**ACT_FORM, "csrf_token": csrf_token(admin)} if method == "POST" else None
        response = admin.open(path, method=method, data=data)
        assert response.status_code == (302 if path == "/logout" else 200), path


def test_a_stolen_session_is_refused_after_logout(app, as_user, redis_client):
    """The cookie copied before logging out opens nothing afterwards: the session is gone from Redis."""
    admin = as_user(ADMIN)
    cookie = admin.get_cookie("email_ingest_console")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("email_ingest_console", cookie.value)
    assert thief.get("/audit").status_code == 200
    assert admin.post("/logout", data={"csrf_token": csrf_token(admin)}).status_code == 302
    assert thief.get("/audit").status_code == 302
    assert thief.post("/dlq/act", data=ACT_FORM).status_code == 401
    assert not list(redis_client.scan_iter(match="email_ingestion:console:session:*"))


def test_sessions_expire(console, app, redis_client):
    """A session idle past CONSOLE_SESSION_IDLE_SECONDS has a Redis TTL that ends it; one older
    than CONSOLE_SESSION_MAX_SECONDS is refused however active."""
    now_ms = int(redis_client.time()[0]) * 1000
    token, session = console.sessions.create(ADMIN, "admin", now_ms)
    ttl = redis_client.ttl(f"email_ingestion:console:session:{session.token_digest}")
    assert 0 < ttl <= console.settings.session_idle_seconds
    old_token, _ = console.sessions.create(ADMIN, "admin", now_ms - console.settings.session_max_seconds * 1000)
    client = app.test_client()
    client.set_cookie("email_ingest_console", old_token)
    assert client.get("/audit").status_code == 302
    client.set_cookie("email_ingest_console", token)
    assert client.get("/audit").status_code == 200


def test_failed_logins_are_limited(app, console):
    """After CONSOLE_LOGIN_MAX_FAILURES wrong passwords the right one is refused too (429) until the window ends."""
    client = app.test_client()
    for _ in range(console.settings.login_max_failures):
        assert login(client, ADMIN, "wrong-password-xx").status_code == 401
    assert login(client, ADMIN, ADMIN_PW).status_code == 429
    # Another name from the same address is refused as well: the address has its own count.
    assert login(client, VIEWER, VIEWER_PW).status_code == 429


def test_unknown_user_and_wrong_password_read_the_same(app):
    """A login for a name that does not exist answers exactly like a wrong password."""
    client = app.test_client()
    wrong = login(client, ADMIN, "wrong-password-xx")
    unknown = login(client, "nobody", "wrong-password-xx")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password." in wrong.get_data(as_text=True)
    assert "Wrong user name or password." in unknown.get_data(as_text=True)


def test_login_needs_its_form_token(app):
    """A cross-site login POST (no token from the login form) is refused: no login CSRF."""
    client = app.test_client()
    refused = client.post("/login", data={"username": ADMIN, "password": ADMIN_PW})
    assert refused.status_code == 403 and client.get_cookie("email_ingest_console") is None


def test_a_role_change_or_removal_ends_the_session(as_user, users_file):
    """Demoting or removing a user in the users file takes effect on that user's next request."""
    admin = as_user(ADMIN)
    assert admin.get("/dlq/plan?action=replay&scope=all&value=").status_code == 200
    write_users(users_file, **{ADMIN: ("viewer", ADMIN_PW), VIEWER: ("viewer", VIEWER_PW)})
    assert admin.get("/dlq/plan?action=replay&scope=all&value=").status_code == 302
    viewer = as_user(VIEWER)
    write_users(users_file, **{ADMIN: ("viewer", ADMIN_PW)})
    assert viewer.get("/audit").status_code == 302


@pytest.mark.parametrize("path", ["/login", "/", "/healthz", "/static/console.css", "/no-such-page"])
def test_security_headers_on_every_response(app, path):
    """CSP without inline script and with frame-ancestors 'none', nosniff, no-store: on pages, errors and static files."""
    response = app.test_client().get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if not path.startswith("/static/"):  # pages may hold message metadata: never kept by a cache
        assert response.headers["Cache-Control"] == "no-store"


def test_session_cookie_flags(app, console_settings, monkeypatch):
    """The session cookie is HttpOnly and SameSite=Strict (Secure when CONSOLE_COOKIE_SECURE)."""
    client = app.test_client()
    page = client.get("/login")
    assert "HttpOnly" in page.headers["Set-Cookie"] and "SameSite=Strict" in page.headers["Set-Cookie"]
    response = login(client, ADMIN, ADMIN_PW)
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header


def test_the_overview_refreshing_itself_does_not_keep_a_session_alive(as_user, redis_client):
    """The overview's automatic refresh (?auto=1) leaves the idle timer running; a person's request renews it."""
    admin = as_user(ADMIN)
    [key] = list(redis_client.scan_iter(match="email_ingestion:console:session:*"))
    redis_client.expire(key, 100)
    assert admin.get("/?auto=1").status_code == 200
    assert redis_client.ttl(key) <= 100
    assert admin.get("/").status_code == 200
    assert redis_client.ttl(key) > 100


def test_logging_in_again_ends_the_previous_session(app, redis_client):
    """A second login from the same browser replaces its session: the first token is refused."""
    client = app.test_client()
    assert login(client, ADMIN, ADMIN_PW).status_code == 302
    first = client.get_cookie("email_ingest_console").value
    assert login(client, VIEWER, VIEWER_PW).status_code == 302
    other = app.test_client()
    other.set_cookie("email_ingest_console", first)
    assert other.get("/audit").status_code == 302
    assert len(list(redis_client.scan_iter(match="email_ingestion:console:session:*"))) == 1


def test_over_https_the_cookies_are_secure_and_prefixed(console_settings, monkeypatch):
    """With CONSOLE_COOKIE_SECURE the cookies are Secure, named __Host-/__Secure-, and HSTS is sent;
    a cookie without the prefix (planted over plain HTTP or by a subdomain) opens nothing."""
    from email_ingestion.common.settings import load_settings
    from email_ingestion.console.app import create_app
    from tests.console.conftest import build_console
    monkeypatch.setenv("CONSOLE_COOKIE_SECURE", "true")
    app = create_app(build_console(load_settings(env_file=None)))
    client = app.test_client()
    page = client.get("/login", base_url="https://localhost")
    assert page.headers["Set-Cookie"].startswith("__Secure-email_ingest_console_login=")
    assert "Secure" in page.headers["Set-Cookie"] and "max-age=31536000" in page.headers["Strict-Transport-Security"]
    import re
    token = re.search(r'name="login_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token
    done = client.post("/login", base_url="https://localhost",
                       data={"login_token": token.group(1), "username": ADMIN, "password": ADMIN_PW})
    cookie = next(h for h in done.headers.getlist("Set-Cookie") if h.startswith("__Host-"))
    assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
    assert client.get("/audit", base_url="https://localhost").status_code == 200
    planted = app.test_client()
    planted.set_cookie("email_ingest_console", cookie.split("=", 1)[1].split(";")[0])
    assert planted.get("/audit", base_url="https://localhost").status_code == 302
