"""Fetched messages (imap/fetched.py) -> stream payloads: parsing, mapping and the dedup fingerprint (identity.py).

Pure: no sockets and no Redis, so it runs in the helper process that build_site.py starts
(where the per-message CPU budget is enforced), and the tests drive it with bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import Address, Attachment, EmailPayload, ParseError
from email_ingestion.common.text import iso_utc
from email_ingestion.imap.bodystructure import body_text_parts
from email_ingestion.imap.fetched import FetchedMessage
from email_ingestion.mail.parse import ParsedMessage, TextPart, parse_message, parse_partial
from email_ingestion.mail.salvage import salvage
from email_ingestion.producer.identity import fingerprint

log = logging.getLogger(__name__)

# CPU time one message may take to build before it goes out degraded. Ordinary mail takes
# well under a millisecond, a 20 MB one a fraction of a second; hostile mail is cut off here.
MESSAGE_BUDGET_S = 5.0
# A payload lists this many attachments at most: 50,000 one-byte parts fit in a 3 MB message
# and would make a 4 MB stream entry.
MAX_LISTED_ATTACHMENTS = 1000

Stage = Literal["parse", "payload", "json"]
OnStage = Callable[[str], None]  # told "parse", "payload", "json" or "salvage" as a message moves on


def _ignore(stage: str) -> None:
    pass


@dataclass(frozen=True)
class Emission:
    """One message ready to append: its dedup fingerprint, UID and payload JSON."""

    fingerprint: str
    uid: int
    payload: str
    gmail_labels: tuple[str, ...] = ()  # as in the payload: the Gmail identity store keeps them (issue 20)


class PayloadBuilder:
    """Builds the payloads of one mailbox; CPU only.

    Whatever goes wrong with one message (an exception anywhere) gives a degraded payload
    for it (see common/payload.py), never a failed batch or a skipped message. The time
    budget is not enforced here but around this code, by the helper process that runs it
    (build_site.py); `on_stage` tells that process which step a message is in.
    """

    def __init__(self, *, account: str, mailbox: str, clock_ms: Clock = wall_ms,
                 budget_s: float = MESSAGE_BUDGET_S) -> None:
        self.account = account
        self.mailbox = mailbox
        self.clock_ms = clock_ms
        self.budget_s = budget_s

    def build(self, messages: Sequence[FetchedMessage], uidvalidity: int, pass_id: str,
              on_stage: OnStage = _ignore) -> list[Emission]:
        return [self.emission(message, uidvalidity, pass_id, on_stage) for message in messages]

    def emission(self, message: FetchedMessage, uidvalidity: int, pass_id: str,
                 on_stage: OnStage = _ignore) -> Emission:
        """One message's payload; degraded (headers salvaged) when any step raises."""
        stage: Stage = "parse"
        with correlation(f"{pass_id}.{message.uid}") as correlation_id:
            facts = _Facts.of(message)
            try:
                on_stage(stage)
                parsed = _parse(message, facts.size)
                on_stage(stage := "payload")
                payload = self.payload(message, uidvalidity, parsed, facts, correlation_id)
                on_stage(stage := "json")
                text = _to_json(payload)
            except Exception as exc:  # noqa: BLE001 - issue 9: one message never stops a mailbox
                error = ParseError(stage=stage, type=type(exc).__name__, reason=_reason(exc))
                return self.degraded(message, uidvalidity, pass_id, error, on_stage)
            if parsed.defects:
                log.info("message parsed with defects", extra={"uid": message.uid, "defects": parsed.defects[:10]})
            return Emission(_fingerprint_of(message, facts), message.uid, text, tuple(facts.labels))

    def degraded(self, message: FetchedMessage, uidvalidity: int, pass_id: str, error: ParseError,
                 on_stage: OnStage = _ignore) -> Emission:
        """The payload of a message the parser gave up on: every header that can be read."""
        # No reason in the log: exception texts can quote message content.
        log.warning("message could not be parsed; delivering a degraded payload",
                    extra={"uid": message.uid, "stage": error.stage, "error_type": error.type})
        on_stage("salvage")
        with correlation(f"{pass_id}.{message.uid}") as correlation_id:
            facts = _Facts.of(message)
            try:
                parsed = salvage(message.body or message.header or b"")
                text = _to_json(self.payload(message, uidvalidity, parsed, facts, correlation_id, error))
            except Exception as again:  # noqa: BLE001 - the last resort: no header at all, still delivered
                return self.bare(message, uidvalidity, pass_id, error, f"headers unreadable: {type(again).__name__}")
            return Emission(_fingerprint_of(message, facts), message.uid, text, tuple(facts.labels))

    def bare(self, message: FetchedMessage, uidvalidity: int, pass_id: str, error: ParseError,
             why: str) -> Emission:
        """The last resort: what the server said about the message, no content read at all
        (cheap and linear, so it is built where no budget is needed)."""
        with correlation(f"{pass_id}.{message.uid}") as correlation_id:
            facts = _Facts.of(message)
            parsed = ParsedMessage(message_id=None, from_=None, to=[], cc=[], reply_to=[], subject=None, date=None,
                                   headers={}, body_truncated=True, defects=[why])
            text = _to_json(self.payload(message, uidvalidity, parsed, facts, correlation_id, error))
            return Emission(_fingerprint_of(message, facts), message.uid, text, tuple(facts.labels))

    def payload(self, message: FetchedMessage, uidvalidity: int, parsed: ParsedMessage,
                facts: _Facts, correlation_id: str, parse_error: ParseError | None = None) -> EmailPayload:
        uid, gm_msgid = message.uid, message.gmail_msgid
        key = f"gm:{self.account}:{gm_msgid}" if gm_msgid else f"imap:{self.account}:{self.mailbox}:{uidvalidity}:{uid}"
        return EmailPayload(
            idempotency_key=key, account=self.account, mailbox=self.mailbox, uid=uid, uidvalidity=uidvalidity,
            message_id=parsed.message_id, gmail_msgid=gm_msgid, gmail_thrid=message.gmail_thrid,
            gmail_labels=facts.labels, from_=_address(parsed.from_),
            to=_addresses(parsed.to), cc=_addresses(parsed.cc),
            reply_to=_addresses(parsed.reply_to), subject=parsed.subject, date=parsed.date,
            internal_date=facts.internal, size=facts.size, flags=facts.flags,
            headers=parsed.headers, body_text=parsed.body_text, body_html_preview=parsed.body_html_preview,
            body_truncated=parsed.body_truncated,
            attachments=[Attachment(filename=a.filename, content_type=a.content_type, size=a.size)
                         for a in parsed.attachments[:MAX_LISTED_ATTACHMENTS]],
            parse_defects=facts.defects + parsed.defects + _unlisted(len(parsed.attachments)),
            parse_error=parse_error,
            fetched_at=_iso_ms(self.clock_ms), correlation_id=correlation_id,
        )


@dataclass(frozen=True)
class _Facts:
    """What the server said about a message (not its content), as the payload shows it."""

    size: int
    internal: str | None
    labels: list[str]
    flags: list[str]
    defects: list[str]

    @classmethod
    def of(cls, message: FetchedMessage) -> _Facts:
        # An absent or unreadable RFC822.SIZE: the bytes we have are the best measure.
        size = message.size if message.size is not None else len(message.body or b"")
        return cls(size=size, internal=iso_utc(message.internal_date), labels=sorted(set(message.gmail_labels)),
                   flags=list(message.flags), defects=list(message.defects))


def _fingerprint_of(message: FetchedMessage, facts: _Facts) -> str:
    """The dedup identity from the raw header bytes (whole message or BODY[HEADER]), as the
    re-sync's HEADER.FIELDS fetch computes it; any bytes get one, so no message is lost to it."""
    header = message.body if message.body is not None else message.header
    try:
        return fingerprint(header or b"", facts.size, message.gmail_msgid)
    except Exception:  # noqa: BLE001 - issue 9: one message never stops a mailbox
        return "x:" + hashlib.sha256(bytes(header or b"")).hexdigest()[:32]


def _parse(message: FetchedMessage, size: int) -> ParsedMessage:
    return parse_message(message.body) if message.body is not None else _parse_large(message, size)


def _to_json(payload: EmailPayload) -> str:
    """The payload as JSON; strings that are not valid UTF-8 (lone surrogates from UTF-7
    words, escape codecs or 8-bit junk) are repaired and the repair recorded."""
    try:
        return payload.to_json()
    except ValueError:  # pydantic: "surrogates not allowed"
        data = _without_surrogates(payload.model_dump(by_alias=True))
        data["parse_defects"].append("lone surrogates replaced by U+FFFD")
        return EmailPayload.model_validate(data).to_json()


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        # Pairs become the character they encode; lone halves become U+FFFD.
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    return value


def _unlisted(attachments: int) -> list[str]:
    extra = attachments - MAX_LISTED_ATTACHMENTS
    return [f"{extra} more attachments not listed"] if extra > 0 else []


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _parse_large(message: FetchedMessage, size: int) -> ParsedMessage:
    """A large message from its header, BODYSTRUCTURE and the first bytes of its text parts."""
    attachments = [p.attachment() for p in message.parts if not p.is_body_text]
    texts = [TextPart(p.content_type, p.charset, p.encoding, data, complete=len(data) >= p.size)
             for p in body_text_parts(message.parts) if (data := message.section(p.section)) is not None]
    return parse_partial(message.header or b"", texts, attachments, size)


def _iso_ms(clock_ms: Callable[[], int]) -> str:
    return iso_utc(dt.datetime.fromtimestamp(clock_ms() / 1000, dt.UTC)) or ""


def _address(pair: tuple[str, str] | None) -> Address | None:
    return Address(name=pair[0], address=pair[1]) if pair else None


def _addresses(pairs: list[tuple[str, str]]) -> list[Address]:
    return [Address(name=name, address=address) for name, address in pairs]
