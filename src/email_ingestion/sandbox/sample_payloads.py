"""Schema-v1 payloads for worker tests, the load test and the worker benchmark."""

from __future__ import annotations

import datetime as dt
from typing import Any

from email_ingestion.common.payload import EmailPayload

_BODY = ("Hello team, please find the weekly report below. Numbers are up across the board. " * 40)[:2000]
_REFERENCES = " ".join(f"<thread-{i}@lists.example.org>" for i in range(12))


def make_payload(index: int, account: str = "alice@example.com", mailbox: str = "INBOX", **extra: Any) -> EmailPayload:
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    fields: dict[str, Any] = dict(
        idempotency_key=f"imap:{account}:{mailbox}:1:{index}", account=account, mailbox=mailbox, uid=index,
        uidvalidity=1, message_id=f"<m{index}@example.org>",
        **{"from": {"name": "Sender", "address": f"s{index}@example.org"}},
        to=[{"name": "Alice", "address": account}], subject=f"Report #{index}",
        date=now, internal_date=now, size=3500, headers={"Message-ID": f"<m{index}@example.org>", "References": _REFERENCES,
                             "Content-Type": "text/plain; charset=utf-8", "List-Id": "<reports.example.org>"},
        body_text=_BODY, body_html_preview="<p>" + _BODY[:480] + "</p>", fetched_at=now,
        correlation_id=f"test.{index}")
    fields.update(extra)
    return EmailPayload.model_validate(fields)


def add_payloads(client: Any, count: int, stream: str = "email_ingestion_stream", start: int = 0,
                 **extra: Any) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for index in range(start, start + count):
        pipe.xadd(stream, {"payload": make_payload(index, **extra).to_json()})
    return [i.decode() for i in pipe.execute()]
