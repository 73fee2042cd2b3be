"""The stream payload, schema version 2: what the producer writes and the worker validates.

Version 2 (issue 20) adds `event`: "message" (a new message, as in version 1) or
"labels_changed" (Gmail: the labels of a message already emitted changed; `labels_added`
and `labels_removed` say how, `gmail_labels` is the set now). A labels_changed payload
carries the message's identity (`account`, `gmail_msgid`, `gmail_thrid`, the folder and UID
where the change was seen) but no content: the content fields are null or empty. Workers
accept versions 1 and 2; a version 1 payload reads as `event: "message"`.

Degraded payloads (issue 9): when a message cannot be built normally (an exception in the
parser, or its time budget ran out), it is still delivered, with `parse_error` set and
whatever could be read: every header field that decodes on its own, UID, size, flags,
INTERNALDATE and `parse_defects`; `body_text` and `body_html_preview` are empty and
`body_truncated` is true. `parse_error` is null on every other payload. Every string is
valid UTF-8: lone surrogates are replaced by U+FFFD and recorded in `parse_defects`.

The JSON Schema in docs/payload.schema.json is generated from this model
(`python -m email_ingestion.common.payload > docs/payload.schema.json`) and a test keeps it in step.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[2] = 2
MESSAGE_EVENT = "message"
LABELS_CHANGED_EVENT = "labels_changed"
Event = Literal["message", "labels_changed"]
PAYLOAD_FIELD = "payload"


class Address(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="display name, decoded (RFC 2047); empty when absent")
    address: str = Field(description="addr-spec as written; may be empty for broken headers")


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True)

    filename: str | None = Field(description="decoded filename (RFC 2231/2047), null when none")
    content_type: str
    size: int = Field(description="decoded size in bytes (for large messages: the size BODYSTRUCTURE reports)")


class ParseError(BaseModel):
    """Why a payload is degraded. No message content in it: `reason` names the failure."""

    model_config = ConfigDict(frozen=True)

    stage: Literal["parse", "payload", "json"] = Field(
        description="parse: reading the MIME structure and fields; payload: mapping them; json: serialising")
    type: str = Field(description="exception class, e.g. RecursionError, or BudgetExceeded for a time overrun")
    reason: str = Field(max_length=200, description="short reason, at most 200 characters")


class EmailPayload(BaseModel):
    """One email as it travels on the stream."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    schema_version: Literal[1, 2] = Field(default=SCHEMA_VERSION,
                                          description="2 since issue 20 (adds `event`); workers also accept 1")
    event: Event = Field(default="message", description="message: a new message; labels_changed: the Gmail "
                                                        "labels of a message already emitted changed")
    idempotency_key: str = Field(description="stable per event: gm:<account>:<X-GM-MSGID> for a Gmail message, "
                                             "gm-labels:<account>:<X-GM-MSGID>:<modseq> for a label change, "
                                             "else imap:<account>:<mailbox>:<uidvalidity>:<uid>")
    account: str
    mailbox: str = Field(description="the folder as configured (a SPECIAL-USE name such as \\All stays so)")
    uid: int
    uidvalidity: int
    message_id: str | None = None
    gmail_msgid: str | None = None
    gmail_thrid: str | None = None
    gmail_labels: list[str] = Field(default_factory=list,
                                    description="Gmail: every label at emission, system labels as Gmail names "
                                                "them (\\Inbox, \\Important, \\Sent, ...); user labels decoded")
    labels_added: list[str] = Field(default_factory=list, description="labels_changed: labels the message gained")
    labels_removed: list[str] = Field(default_factory=list, description="labels_changed: labels the message lost")
    from_: Address | None = Field(default=None, alias="from", serialization_alias="from")
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    subject: str | None = None
    date: str | None = Field(default=None, description="Date header as ISO 8601 UTC; null when missing or unparseable")
    internal_date: str | None = Field(default=None, description="the server's INTERNALDATE (arrival), ISO 8601 UTC")
    size: int = Field(default=0, description="RFC822.SIZE in bytes")
    flags: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Message-ID, In-Reply-To, References, Content-Type, List-Id")
    body_text: str = Field(default="", description="first 2000 characters of the text body, decoded")
    body_html_preview: str = Field(default="", description="first 500 characters of the HTML body")
    body_truncated: bool = Field(default=False, description="true when the body was cut or fetched partially")
    attachments: list[Attachment] = Field(default_factory=list,
                                          description="at most 1000; more are counted in parse_defects")
    parse_defects: list[str] = Field(default_factory=list)
    parse_error: ParseError | None = Field(
        default=None, description="set on a degraded payload (the body could not be read); null otherwise")
    fetched_at: str
    correlation_id: str

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> EmailPayload:
        return cls.model_validate_json(data)


def payload_fields(raw: str | bytes | None) -> dict[str, Any]:
    """A payload's JSON object, unvalidated, or {} when it is not one: operator views read a
    few identifying fields of whatever a stream or the DLQ holds, broken entries included."""
    try:
        value = json.loads(raw or "")
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def json_schema() -> dict[str, object]:
    schema = EmailPayload.model_json_schema(by_alias=True, mode="serialization")
    schema["$id"] = "https://github.com/email-ingestion/payload.schema.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":
    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
