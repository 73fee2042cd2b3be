"""The console attacked: markup in stored data, hostile search input, header injection, oversized requests."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from email_ingestion.sandbox.sample_payloads import make_payload
from tests.console.conftest import ADMIN, ADMIN_PW, DLQ, STREAM, VIEWER, login
from tests.console.test_http_auth import add_letter

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'


def test_markup_in_subjects_reasons_and_ids_is_escaped(as_user, redis_client):
    """Subjects, DLQ reasons, error texts, Message-IDs and account names holding markup are shown
    as text on every page (never as tags), for admins and viewers."""
    payload = json.dumps({"account": IMG, "mailbox": SCRIPT, "uid": 1, "message_id": f"<{SCRIPT}@x>",
                          "subject": SCRIPT, "idempotency_key": "k1"})
    letter = add_letter(redis_client, payload=payload, reason=SCRIPT, error_type=IMG, error_message=SCRIPT,
                        traceback=IMG)
    redis_client.xadd(STREAM, {"payload": make_payload(1, subject=SCRIPT, message_id=f"<{SCRIPT}@x>").to_json()})
    for who in (ADMIN, VIEWER):
        client = as_user(who)
        pages = ["/", "/dlq", f"/dlq/letter/{letter}", f"/search?q={quote(f'<{SCRIPT}@x>')}"]
        if who == ADMIN:
            pages.append(f"/dlq/plan?action=replay&scope=reason&value={quote(SCRIPT)}")
        for path in pages:
            body = client.get(path).get_data(as_text=True)
            assert "<script>alert" not in body and "<img src=x" not in body, (who, path)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/dlq").get_data(as_text=True)


def test_hostile_search_input(as_user, redis_client):
    """Oversized, control-character and glob/regex-looking queries are answered with a 400 or an
    empty result, never an error page or a Redis error; an unknown kind is a 400."""
    redis_client.xadd(STREAM, {"payload": make_payload(1).to_json()})
    client = as_user(VIEWER)
    assert client.get("/search?q=" + "a" * 100_000).status_code in (400, 414)
    assert client.get("/search?q=" + "a" * 999).status_code == 400
    assert client.get("/search?q=%0d%0aX-Injected:%201").status_code == 400
    assert client.get("/search?q=%00").status_code == 400
    assert client.get("/search?q=x&kind=__class__").status_code == 400
    for query in ["*", "[a-z]*", ".*", "\\", '"', "' OR 1=1 --", "{email_ingestion_stream}", "0-0", "99999999999999999999-1"]:
        response = client.get(f"/search?q={quote(query)}")
        assert response.status_code == 200, query
        assert "0 found" in response.get_data(as_text=True), query


@pytest.mark.parametrize("target", [
    "//evil.example/", "https://evil.example/", "/\\evil.example", "/x%0d%0aSet-Cookie:%20a=b", "javascript:alert(1)",
])
def test_login_redirect_stays_on_site(app, target):
    """The `next` after logging in is a path on this site; CR/LF, //host and schemes fall back to /."""
    client = app.test_client()
    page = client.get(f"/login?next={quote(target, safe='')}")
    assert "Set-Cookie: a=b" not in str(page.headers)
    import re
    token = re.search(r'name="login_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token
    done = client.post("/login", data={"login_token": token.group(1), "username": ADMIN, "password": ADMIN_PW,
                                       "next": target.replace("%0d%0a", "\r\n")})
    assert done.status_code == 302 and done.headers["Location"] == "/"
    assert "a=b" not in done.headers.getlist("Set-Cookie")


def test_oversized_and_hostile_forms(app, as_user, redis_client):
    """A form body over the limit is 413; long or hostile login fields are refused as a wrong login."""
    admin = as_user(ADMIN)
    assert admin.post("/dlq/act", data={"value": "x" * 100_000}).status_code == 413
    client = app.test_client()
    assert login(client, "a" * 10_000, "b" * 10_000).status_code == 401
    assert login(client, f"{ADMIN}\r\nX: y", ADMIN_PW).status_code == 401
    assert admin.get("/dlq/letter/" + quote("1-0 OR *")).status_code == 404
    assert admin.get("/dlq/plan?action=eval&scope=all&value=").status_code == 400
    assert admin.get("/dlq/plan?action=purge&scope=one&value=" + quote("+")).status_code == 400
    assert redis_client.exists(DLQ) == 0


def test_a_huge_cookie_is_not_a_session(app):
    """A cookie value far longer than a token is refused before touching Redis."""
    client = app.test_client()
    client.set_cookie("email_ingest_console", "x" * 4000)
    assert client.get("/audit").status_code == 302


def test_forwarded_headers_are_ignored_without_a_trusted_proxy(app, console, redis_client):
    """With CONSOLE_TRUSTED_PROXIES=0 a client cannot dodge the login limit or fake its audited
    address by sending X-Forwarded-For: the peer's address counts."""
    client = app.test_client()
    for i in range(console.settings.login_max_failures):
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"10.9.9.{i}"
        assert login(client, f"guess{i}", "wrong-password-xx").status_code == 401
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "10.9.9.200"
    assert login(client, ADMIN, ADMIN_PW).status_code == 429
    assert redis_client.get("email_ingestion:console:login_failures:addr:127.0.0.1") == b"5"


def test_a_trusted_proxy_forwards_the_client_address(console_settings, monkeypatch, redis_client):
    """Behind one trusted proxy the forwarded address is the one limited and audited."""
    from email_ingestion.common.settings import load_settings
    from email_ingestion.console.app import create_app
    from tests.console.conftest import build_console
    monkeypatch.setenv("CONSOLE_TRUSTED_PROXIES", "1")
    app = create_app(build_console(load_settings(env_file=None)))
    client = app.test_client()
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "10.0.0.1"
    for _ in range(5):
        assert login(client, ADMIN, "wrong-password-xx").status_code == 401
    assert redis_client.get("email_ingestion:console:login_failures:addr:10.0.0.1") == b"5"
    assert redis_client.get("email_ingestion:console:login_failures:addr:127.0.0.1") is None
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "10.0.0.2"
    assert login(client, VIEWER, "vic-battery-staple-2").status_code == 302


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e%2f%2e%2e%2fcommon/settings.py"])
def test_static_files_stay_in_their_folder(app, path):
    """Path traversal through /static finds nothing outside the static folder."""
    response = app.test_client().get(path)
    assert response.status_code == 404 and b"BaseSettings" not in response.data


def test_redis_down_is_a_503_without_details(console_settings, monkeypatch):
    """With Redis unreachable every page is a 503 naming the error class, not the address or a traceback."""
    from email_ingestion.common.settings import load_settings
    from email_ingestion.console.app import create_app
    from tests.console.conftest import build_console
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    app = create_app(build_console(load_settings(env_file=None)))
    for path in ("/login", "/", "/dlq"):
        response = app.test_client().get(path)
        assert response.status_code == 503 and b"ConnectionError" in response.data
        assert b"127.0.0.1:1" not in response.data and b"Traceback" not in response.data
