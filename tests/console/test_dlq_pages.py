"""The console's DLQ pages: grouping, content for admins only, plans that act on what they showed, the audit trail."""

from __future__ import annotations

import re

from tests.console.conftest import ADMIN, DLQ, STREAM, VIEWER, csrf_token
from tests.console.test_http_auth import add_letter


def test_content_is_for_admins_only(as_user, redis_client):
    """A viewer sees a letter's metadata but not its payload, error text or traceback; an admin sees all."""
    letter = add_letter(redis_client)
    viewer = as_user(VIEWER).get(f"/dlq/letter/{letter}").get_data(as_text=True)
    assert "&lt;x7@example.org&gt;" in viewer and "PermanentError" in viewer
    assert "secret subject" not in viewer and "secret error text" not in viewer and "Traceback: secret" not in viewer
    admin = as_user(ADMIN).get(f"/dlq/letter/{letter}").get_data(as_text=True)
    assert "secret subject" in admin and "secret error text" in admin and "Traceback: secret" in admin


def test_groups_by_reason_with_counts(as_user, redis_client):
    """The DLQ page counts letters per reason."""
    for _ in range(3):
        add_letter(redis_client, reason="max_retries")
    add_letter(redis_client, reason="permanent")
    body = as_user(VIEWER).get("/dlq").get_data(as_text=True)
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td>", body)
    assert ("max_retries", "3") in rows and ("permanent", "1") in rows


def test_a_group_replay_acts_on_what_the_plan_showed(as_user, redis_client):
    """Replaying a reason shows the count first; confirming replays exactly those letters, not one
    that arrived after the plan was shown, nor other reasons; the audit trail records who, what, how many."""
    shown = [add_letter(redis_client, reason="max_retries") for _ in range(2)]
    other = add_letter(redis_client, reason="permanent")
    admin = as_user(ADMIN)
    plan = admin.get("/dlq/plan?action=replay&scope=reason&value=max_retries").get_data(as_text=True)
    assert "2 dead letters" in plan
    upto = re.search(r'name="upto" value="([^"]+)"', plan)
    assert upto
    late = add_letter(redis_client, reason="max_retries")
    done = admin.post("/dlq/act", data={"action": "replay", "scope": "reason", "value": "max_retries",
                                        "upto": upto.group(1), "csrf_token": csrf_token(admin)})
    assert done.status_code == 200 and "Replayed 2 of 2" in done.get_data(as_text=True)
    left = {e.decode() for e, _ in redis_client.xrange(DLQ)}
    assert left == {other, late}
    replayed = {f[b"replayed_from"].decode() for _, f in redis_client.xrange(STREAM)}
    assert replayed == set(shown)
    entry = redis_client.xrevrange("email_ingestion:console:audit", count=1)[0][1]
    assert entry[b"user"] == ADMIN.encode() and entry[b"action"] == b"dlq.replay" and entry[b"count"] == b"2"
    assert b"max_retries" in entry[b"scope"]
    assert "dlq.replay" in admin.get("/audit").get_data(as_text=True)


def test_purge_of_one_letter(as_user, redis_client):
    """Purging one letter removes that letter only and is audited."""
    first, second = add_letter(redis_client), add_letter(redis_client)
    admin = as_user(ADMIN)
    plan = admin.get(f"/dlq/plan?action=purge&scope=one&value={first}").get_data(as_text=True)
    assert re.search(r"\b1 dead letter\s", plan) and "delete for good" in plan
    done = admin.post("/dlq/act", data={"action": "purge", "scope": "one", "value": first, "csrf_token": csrf_token(admin)})
    assert "Purged 1 of 1" in done.get_data(as_text=True)
    assert [e.decode() for e, _ in redis_client.xrange(DLQ)] == [second]
    assert redis_client.xlen("email_ingestion:console:audit") == 1
