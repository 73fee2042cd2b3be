"""What an operator sees of a dead letter: one readable line (id, age, reason, account,
mailbox, uid, Message-ID), the filters `email-dlq list` takes, and the full view of one
letter. The payload is read only for its identifying fields: subjects, addresses and bodies
are never printed unless asked for (`show --payload`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from email_ingestion.common import entry_fields as F
from email_ingestion.common.payload import payload_fields
from email_ingestion.common.text import human_duration, iso_from_epoch_s, printable

SEARCHED = ("id", "original_id", "message_id", "gmail_msgid", "idempotency_key", "error_type")


@dataclass(frozen=True)
class Letter:
    """A dead letter's identity and cause, read once from its fields and payload."""

    id: str
    stream: str
    age_s: float
    reason: str
    error_type: str
    error_message: str
    account: str
    mailbox: str
    uid: str
    message_id: str
    gmail_msgid: str
    idempotency_key: str
    original_id: str
    attempts: str
    # The letter's other metadata (failure times, consumer, ...), never its payload or traceback.
    metadata: dict[str, str]

    @classmethod
    def of(cls, entry: dict[str, Any], stream: str, now_ms: int) -> Letter:
        payload = payload_fields(entry.get(F.PAYLOAD, ""))
        text = {k: "" if payload.get(k) is None else str(payload.get(k)) for k in
                ("account", "mailbox", "uid", "message_id", "gmail_msgid", "idempotency_key")}
        return cls(id=entry["id"], stream=entry.get(F.SOURCE_STREAM) or stream,
                   age_s=max(0.0, (now_ms - int(entry["id"].split("-")[0])) / 1000),
                   reason=entry.get("reason", "?"), error_type=entry.get("error_type", ""),
                   error_message=entry.get("error_message", ""), original_id=entry.get(F.ORIGINAL_ID, ""),
                   attempts=entry.get("attempts", ""),
                   metadata={k: v for k, v in entry.items() if k not in (F.PAYLOAD, "traceback", "id")}, **text)

    def matches(self, *, reason: str | None, account: str | None, max_age_s: float | None,
                search: str | None) -> bool:
        if reason and self.reason != reason:
            return False
        if account and self.account.lower() != account.lower():
            return False
        if max_age_s is not None and self.age_s > max_age_s:
            return False
        if search:
            needle = search.lower()
            return any(needle in str(getattr(self, name)).lower() for name in SEARCHED)
        return True

    def row(self) -> dict[str, Any]:
        """Everything known of the letter (payload aside), instants also as ISO 8601."""
        fields = {k: v for k, v in self.__dict__.items() if k != "metadata"}
        times = {k.removesuffix("_ms"): iso_from_epoch_s(int(v) / 1000) for k, v in self.metadata.items()
                 if k.endswith("_ms") and str(v).isdigit()}
        return {**self.metadata, **times, **fields, "age": human_duration(self.age_s)}


COLUMNS = (("id", "ID"), ("age", "AGE"), ("reason", "REASON"), ("account", "ACCOUNT"), ("mailbox", "MAILBOX"),
           ("uid", "UID"), ("message_id", "MESSAGE-ID"))
MAX_CELL = 60


def table(letters: list[Letter], streams: int) -> list[str]:
    """Aligned columns, one line per letter (the stream too when several are shown)."""
    columns = ((("stream", "STREAM"),) if streams > 1 else ()) + COLUMNS
    rows = [{key: _cell(letter.row()[key]) for key, _ in columns} for letter in letters]
    widths = {key: max([len(title), *(len(r[key]) for r in rows)]) for key, title in columns}
    lines = ["  ".join(title.ljust(widths[key]) for key, title in columns).rstrip()]
    lines += ["  ".join(r[key].ljust(widths[key]) for key, _ in columns).rstrip() for r in rows]
    return lines


def _cell(value: Any) -> str:
    text = printable(value) or "-"
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


MAX_FIELD = 2000  # an error text or traceback longer than this is cut in the text view (--json has all)


def details(entry: dict[str, Any], letter: Letter, with_payload: bool) -> list[str]:
    """`email-dlq show`: every metadata field as `name: value`, times as ISO 8601; every
    value made printable (escapes shown, never sent to the terminal)."""
    lines = [f"{key}: {_field(value)}" for key, value in
             (("dlq id", letter.id), ("stream", letter.stream), ("original stream id", letter.original_id),
              ("age", human_duration(letter.age_s)), ("reason", letter.reason), ("error", f"{letter.error_type}: "
              f"{letter.error_message}"), ("attempts", letter.attempts), ("account", letter.account),
              ("mailbox", letter.mailbox), ("uid", letter.uid), ("message-id", letter.message_id),
              ("x-gm-msgid", letter.gmail_msgid), ("idempotency key", letter.idempotency_key))]
    for key in sorted(entry):
        if key.endswith("_ms") and str(entry[key]).isdigit():
            lines.append(f"{printable(key.removesuffix('_ms'))}: {iso_from_epoch_s(int(entry[key]) / 1000)}")
    if entry.get("consumer"):
        lines.append(f"consumer: {_field(entry['consumer'])}")
    if entry.get("traceback"):
        lines += ["traceback:", *("  " + line for line in _field(entry["traceback"], keep_newlines=True).splitlines())]
    if with_payload:
        content = json.dumps(payload_fields(entry.get(F.PAYLOAD, "")), indent=2, ensure_ascii=False)
        lines += ["payload:", printable(content, keep_newlines=True)]
    else:
        lines.append(f"payload: {len(entry.get(F.PAYLOAD, ''))} bytes (--payload to print it)")
    return lines


def _field(value: Any, keep_newlines: bool = False) -> str:
    text = printable(value, keep_newlines=keep_newlines)
    if len(text) <= MAX_FIELD:
        return text
    return f"{text[:MAX_FIELD]}… ({len(text) - MAX_FIELD} more characters: --json for all)"
