"""The console with the least-privilege `console` ACL user of config/users.acl.example."""

from __future__ import annotations

import re

from email_ingestion.common.settings import load_settings
from email_ingestion.console.app import create_app
from email_ingestion.sandbox.sample_payloads import make_payload
from tests.console.conftest import ADMIN, DLQ, STREAM, build_console, csrf_token, login
from tests.console.test_http_auth import LETTER_FIELDS
from tests.integration.test_redis_acl import PASSWORDS, acl_redis  # noqa: F401 - the fixture

ADMIN_PW = "ada-correct-horse-1"


def test_every_page_and_action_works_with_the_console_user(acl_redis, users_file, monkeypatch):  # noqa: F811
    """Overview, DLQ, search, audit, login limit, replay and logout all run with only the `console` user's commands."""
    port, admin = acl_redis
    admin.xadd(STREAM, {"payload": make_payload(1).to_json()})
    letter = admin.xadd(DLQ, LETTER_FIELDS).decode()
    monkeypatch.setenv("REDIS_URL", f"redis://console:CHANGE-ME-console@127.0.0.1:{port}/0")
    monkeypatch.setenv("CONSOLE_USERS_FILE", str(users_file))
    app = create_app(build_console(load_settings(env_file=None)))
    client = app.test_client()
    response = login(client, ADMIN, "wrong-password-xx")
    assert response.status_code == 401, response.get_data(as_text=True)[-300:]
    assert login(client, ADMIN, ADMIN_PW).status_code == 302
    for path in ["/", "/dlq", f"/dlq/letter/{letter}", "/search?q=%3Cm1%40example.org%3E", "/audit",
                 "/search?q=" + letter + "&kind=stream_id", "/dlq/plan?action=replay&scope=all&value="]:
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[-500:])
    plan = client.get(f"/dlq/plan?action=purge&scope=one&value={letter}").get_data(as_text=True)
    assert re.search(r"\b1 dead letter\s", plan)
    done = client.post("/dlq/act", data={"action": "replay", "scope": "all", "value": "", "csrf_token": csrf_token(client)})
    assert done.status_code == 200 and admin.xlen(DLQ) == 0 and admin.xlen(STREAM) == 2
    assert client.post("/logout", data={"csrf_token": csrf_token(client)}).status_code == 302




def test_a_worker_without_hincrby_still_settles_every_batch(acl_redis, tmp_path):  # noqa: F811
    """With an older worker ACL (no HINCRBY) the flow figures are lost, never the batches: all
    messages are handled and acknowledged, nothing pending, no flow key."""
    import os
    import subprocess
    import sys

    from email_ingestion.sandbox.sample_payloads import add_payloads
    from tests.conftest import ROOT
    port, admin = acl_redis
    admin.execute_command("ACL", "SETUSER", "worker", "-hincrby")
    add_payloads(admin, 30)
    env = {"PATH": os.environ["PATH"], "REDIS_URL": f"redis://worker:{PASSWORDS['worker']}@127.0.0.1:{port}/0",
           "WORKER_BLOCK_TIMEOUT_MS": "100", "WORKER_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "old-acl", "--handler", "noop", "--burst",
                           "--env-file", os.devnull], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    group = admin.xinfo_groups(STREAM)[0]
    assert group["pending"] == 0 and group["lag"] == 0
    assert not list(admin.scan_iter(match="*:flow:*"))
    assert done.stderr.count("flow figures not recorded") == 1
