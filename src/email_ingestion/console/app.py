"""The console's Flask application: routes, login and logout, security headers.

Flask because the console is a handful of server-rendered pages: Jinja2 templates escape
everything by default, Werkzeug parses requests carefully, and both are among the most used
and longest maintained Python web libraries. waitress (cli.py) serves it in production.
"""

from __future__ import annotations

import logging
import secrets

import redis
from flask import Flask, abort, current_app, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from email_ingestion.admin.common import server_ms
from email_ingestion.console import pages
from email_ingestion.console.formatting import duration
from email_ingestion.console.guard import (
    Console,
    cookie_names,
    current,
    load_session,
    login_required,
    safe_next,
    security_headers,
)
from email_ingestion.console.users import check_login

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 64 * 1024
MAX_LOGIN_FIELD_CHARS = 256


def create_app(console: Console) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_FORM_BYTES, MAX_FORM_MEMORY_SIZE=MAX_FORM_BYTES)
    app.extensions["console"] = console
    if console.settings.trusted_proxies:
        n = console.settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    app.before_request(lambda: _before(console))
    app.after_request(lambda response: security_headers(response, https=console.settings.cookie_secure))
    app.context_processor(lambda: {"session": current()})
    app.add_template_filter(duration, "duration")
    app.add_template_filter(lambda ms: duration(max(0, g.now_ms - int(ms)) / 1000), "age")
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.RedisError, _redis_error)
    _auth_routes(app, console)
    pages.register(app, console)
    return app


def _before(console: Console) -> None:
    g.now_ms = server_ms(console.target.client)  # Redis's clock: ages agree with every other tool
    load_session(console, g.now_ms)


def _http_error(exc: HTTPException) -> tuple[str, int]:
    return render_template("error.html", code=exc.code, message=exc.description), exc.code or 500


def _redis_error(exc: redis.RedisError) -> tuple[str, int]:
    # The class only: a Redis error text may carry a host name or key, never needed here.
    return render_template("error.html", code=503, message=f"Redis is unavailable ({type(exc).__name__})"), 503


def client_address() -> str:
    return request.remote_addr or "?"


def _auth_routes(app: Flask, console: Console) -> None:
    @app.get("/login")
    def login() -> Response:
        return _login_form(error=None, status=200)

    @app.post("/login")
    def login_post() -> Response:
        return _login(console)

    @app.post("/logout")
    @login_required
    def logout() -> Response:
        session = current()
        if session is not None:
            console.sessions.end(session)
        response = redirect(url_for("login"))
        response.delete_cookie(cookie_names(console.settings.cookie_secure)[0], path="/",
                               secure=console.settings.cookie_secure)
        return response

    @app.get("/healthz")
    def healthz() -> tuple[str, int, dict[str, str]]:
        return "ok\n", 200, {"Content-Type": "text/plain"}


def _login_form(*, error: str | None, status: int) -> Response:
    token = secrets.token_urlsafe(32)
    body = render_template("login.html", error=error, login_token=token, next=safe_next(request.values.get("next")))
    response = Response(body, status=status, mimetype="text/html")
    secure = current_app.extensions["console"].settings.cookie_secure
    response.set_cookie(cookie_names(secure)[1], token, httponly=True, samesite="Strict", path="/login", secure=secure)
    return response


def _login(console: Console) -> Response:
    session_cookie, login_cookie = cookie_names(console.settings.cookie_secure)
    sent, expected = request.form.get("login_token", ""), request.cookies.get(login_cookie, "")
    if not sent or not secrets.compare_digest(sent, expected):
        abort(403, "missing or wrong CSRF token: reload the login page")
    name = request.form.get("username", "")[:MAX_LOGIN_FIELD_CHARS]
    password = request.form.get("password", "")[:MAX_LOGIN_FIELD_CHARS]
    if console.login_limit.blocked(name, client_address()):
        return _login_form(error="Too many failed logins: try again later.", status=429)
    user = check_login(console.users.users(), name, password)
    if user is None:
        # The address only: what was typed as a user name is sometimes a password.
        log.warning("console login failed", extra={"client": client_address()})
        console.login_limit.failed(name, client_address())
        return _login_form(error="Wrong user name or password.", status=401)
    console.login_limit.succeeded(name)
    previous = current()
    if previous is not None:  # a new login replaces the session this browser had
        console.sessions.end(previous)
    token, _ = console.sessions.create(user.name, user.role, server_ms(console.target.client))
    log.info("console login", extra={"user": user.name, "role": user.role, "client": client_address()})
    response = redirect(safe_next(request.form.get("next")))
    response.set_cookie(session_cookie, token, httponly=True, samesite="Strict", path="/",
                        secure=console.settings.cookie_secure, max_age=console.settings.session_max_seconds)
    response.delete_cookie(login_cookie, path="/login", secure=console.settings.cookie_secure)
    return response
