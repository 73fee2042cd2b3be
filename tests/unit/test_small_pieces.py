"""Pure logic: keys, payload schema file, progress arithmetic, throttling backoff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tenacity import RetryCallState

from email_ingestion.common.errors import ImapConnectionError, ImapThrottledError
from email_ingestion.common.keys import MailboxKeys, StreamKeys, dlq_stream, hash_tag
from email_ingestion.common.payload import json_schema
from email_ingestion.producer.progress import Progress
from email_ingestion.producer.runner import _throttle_pause

ROOT = Path(__file__).resolve().parents[2]


def slot_tag(key: str) -> str:
    start = key.index("{")
    return key[start:key.index("}", start) + 1]


def test_keys_of_a_mailbox_share_the_stream_hash_tag():
    """State, dedup, retry, idempotency and DLQ keys all carry the stream's hash tag (same slot)."""
    keys = MailboxKeys("email_ingestion_stream", "a@x.org", "INBOX")
    for key in (keys.state, keys.seen):
        assert slot_tag(key) == "{email_ingestion_stream}"
        assert "a@x.org" in key and "INBOX" in key
    consumer = StreamKeys("email_ingestion_stream", "g")
    assert slot_tag(consumer.retries) == slot_tag(consumer.idempotency("k")) == "{email_ingestion_stream}"
    assert slot_tag(dlq_stream("email_ingestion_stream", "email_ingestion_dlq")) == "{email_ingestion_stream}"


def test_account_and_mailbox_cannot_break_the_key_shape():
    """Colons and braces in account or mailbox names cannot make keys collide or open a second hash tag."""
    a = MailboxKeys("s", "x:y", "z").state
    b = MailboxKeys("s", "x", "y:z").state
    assert a != b
    assert MailboxKeys("s", "a}b{c", "m").state.count("{") == 1


def test_stream_name_with_its_own_tag_keeps_it():
    """A stream name that already holds a hash tag keeps that tag."""
    assert hash_tag("mail:{acct1}") == "{acct1}"


def test_published_json_schema_matches_the_model():
    """docs/payload.schema.json is identical to the schema generated from the payload model."""
    published = json.loads((ROOT / "docs" / "payload.schema.json").read_text())
    assert published == json.loads(json.dumps(json_schema())), \
        "regenerate: python -m email_ingestion.common.payload > docs/payload.schema.json"


def test_progress_rate_and_eta():
    """Progress reports done count, rate per second and ETA from elapsed time and the total."""
    now = [0.0]
    progress = Progress(total=1000, interval_s=10, clock=lambda: now[0])
    now[0] = 5.0
    progress.advance(250)
    snap = progress.snapshot()
    assert snap["rate_per_s"] == 50.0 and snap["eta_s"] == 15.0 and snap["done"] == 250


def _state(exc: Exception, attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_throttling_adds_a_growing_pause_capped_at_5_minutes():
    """Only throttling errors add a pause, 30 s per attempt, capped at 300 s."""
    assert _throttle_pause(_state(ImapConnectionError("x"), 1)) == 0
    assert _throttle_pause(_state(ImapThrottledError("[THROTTLED]"), 1)) == 30
    assert _throttle_pause(_state(ImapThrottledError("[THROTTLED]"), 3)) == 90
    assert _throttle_pause(_state(ImapThrottledError("[THROTTLED]"), 50)) == 300


def test_missing_mailbox_hint_finds_the_folder_under_another_separator():
    """'Archive.2024' on a '/' server: the hint names Archive/2024 and the separator; with
    nothing close it lists the folders."""
    from email_ingestion.imap.folders import mailbox_not_found, names_missing_mailbox
    folders = [((), b"/", name) for name in ("INBOX", "Archive", "Archive/2024", "Sent")]
    text = str(mailbox_not_found("archive.2024", folders))
    assert "close names: Archive/2024" in text and "hierarchy separator '/'" in text
    assert "INBOX, Archive, Archive/2024, Sent" in str(mailbox_not_found("Zzz", folders))
    for answer in ("NO [NONEXISTENT] Mailbox doesn't exist: X", "NO Mailbox does not exist",
                   "NO [CANNOT] Character not allowed in mailbox name: '.'", "NO Unknown Mailbox: X (Failure)"):
        assert names_missing_mailbox(answer), answer
    assert not names_missing_mailbox("NO [UNAVAILABLE] try later")


def test_idle_connection_closed_reconnects_at_once_then_backs_off():
    """The first reconnect after the server closed an idle connection has no pause; a
    second failure in a row and any other failure back off."""
    from email_ingestion.common.errors import ImapConnectionClosedError
    from email_ingestion.producer.runner import _backoff
    assert _backoff(_state(ImapConnectionClosedError("eof"), 1)) == 0
    assert _backoff(_state(ImapConnectionClosedError("eof"), 2)) >= 2
    assert _backoff(_state(ImapConnectionError("reset"), 1)) >= 1
    assert _backoff(_state(ImapThrottledError("[THROTTLED]"), 1)) >= 31


def test_every_row_of_the_error_table_names_tests_that_exist():
    """docs/producer.md "Errors and exit codes": each row cites a test, and each cited test exists."""
    import re
    readme = (ROOT / "docs" / "producer.md").read_text()
    table = readme.split("## Errors and exit codes", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Condition")]
    sources = "".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    assert len(rows) >= 15
    for row in rows:
        cited = re.findall(r"`(test_\w+)`|`(tests/[\w/]+\.py)`", row.rsplit("|", 2)[-2])
        assert cited, row
        for name, path in cited:
            assert (f"def {name}(" in sources) if name else (ROOT / path).exists(), name or path


def test_tail_summary_never_shows_a_name_as_a_domain_nor_crashes_on_odd_payloads():
    """`tail` without --show-content prints a domain only after an '@'; a payload that is JSON
    but not an object is summarised, not a traceback."""
    import json

    from email_ingestion.admin.tail import summary
    for address in ("alice.private", "Alice Private", "=?utf-8?q?Alice_Private?="):
        line = summary(b"1-0", {b"payload": json.dumps({"from": {"address": address}}).encode()}, False)
        assert "Alice" not in line and "alice" not in line and "from_domain=-" in line
    assert "from_domain=example.org" in summary(b"1-0", {b"payload": b'{"from": {"address": "a@example.org"}}'}, False)
    for odd in (b"[1]", b'"text"', b"null", b'{"from": "x@y"}'):
        assert "1-0" in summary(b"1-0", {b"payload": odd}, False)


@pytest.mark.parametrize("url", ["redis://:s3cretpw/x@127.0.0.1:6379/0", "redis://:s3cr#etpw@h:6379",
                                 "redis://user:s3cr?etpw@h:6379", "redis://u:p@s3cretpw@h:6379/0"])
def test_a_password_with_reserved_characters_never_reaches_a_message(url):
    """Unencoded '/', '#', '?' or '@' in a REDIS_URL password: redacted in describe(), the
    settings error and the log redactor's secrets."""
    from email_ingestion.common.errors import SettingsError
    from email_ingestion.common.redis_client import make_redis, redact_url
    from email_ingestion.common.settings import RedisSettings, Settings, load_settings
    assert "s3cr" not in redact_url(url)
    try:
        make_redis(RedisSettings(url=url))
    except SettingsError as exc:
        assert "s3cr" not in str(exc)
    secret = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    settings: Settings = load_settings({"redis": {"url": url}}, env_file=None)
    assert secret in settings.secrets()


def test_operator_commands_refuse_a_malformed_redis_url_with_one_line(monkeypatch, capsys):
    """status/tail/consumers/dlq: a REDIS_URL that cannot be parsed exits 2 with one line, no traceback."""
    from email_ingestion.admin.cli import main as ingest
    from email_ingestion.worker.dlq_admin import main as dlq
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret/x@127.0.0.1:99999")
    for run in (lambda: ingest(["status"]), lambda: ingest(["tail"]), lambda: ingest(["consumers", "list"]),
                lambda: dlq(["list"])):
        assert run() == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "REDIS_URL" in err and "s3cret" not in err


def test_lease_freshness_window_is_bounded_by_the_heartbeat_ttl():
    """Leases count as surely ours for the shorter of lease and heartbeat TTL (minus a third):
    once the heartbeat is gone others may take leases over, long before the lease expires."""
    from email_ingestion.worker.timings import ProcessorTimings

    def timings(lease_ms: int, heartbeat_ttl_ms: int) -> ProcessorTimings:
        return ProcessorTimings(lease_ms=lease_ms, renew_interval_s=1.0, handler_timeout_s=300,
                                heartbeat_ttl_ms=heartbeat_ttl_ms)

    assert timings(12_000, 2_000).fresh_s == pytest.approx((2_000 - 2_000 // 3) / 1000)
    assert timings(3_000, 15_000).fresh_s == 2.0


def test_default_timings_are_consistent_and_a_stall_check_below_the_handler_timeout_is_refused(monkeypatch):
    """The shipped defaults pass the worker's ratio checks; /health stalling before a handler may time out does not."""
    from email_ingestion.common.errors import SettingsError
    from email_ingestion.common.settings import load_settings
    from email_ingestion.worker import timings
    settings = load_settings(env_file=None)
    timings.check(settings.worker, settings.retry, settings.health)
    monkeypatch.setenv("HEALTH_STALL_SECONDS", "180")
    settings = load_settings(env_file=None)
    with pytest.raises(SettingsError, match="HEALTH_STALL_SECONDS"):
        timings.check(settings.worker, settings.retry, settings.health)


def test_a_block_timeout_the_socket_timeout_would_cut_is_refused(monkeypatch):
    """Review (g): XREADGROUP BLOCK 5 s on a socket that times out after 5 s would end every
    idle read in a TimeoutError; the defaults leave room, a socket timeout at the block time does not."""
    from email_ingestion.common.errors import SettingsError
    from email_ingestion.common.settings import load_settings
    from email_ingestion.worker import timings
    settings = load_settings(env_file=None)
    timings.check(settings.worker, settings.retry, settings.health, settings.redis)
    monkeypatch.setenv("REDIS_SOCKET_TIMEOUT_SECONDS", "5")
    settings = load_settings(env_file=None)
    with pytest.raises(SettingsError, match="REDIS_SOCKET_TIMEOUT_SECONDS=5"):
        timings.check(settings.worker, settings.retry, settings.health, settings.redis)
