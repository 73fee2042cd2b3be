"""Raw FETCH data -> stream payloads: parsing, mapping and the dedup fingerprint (identity.py).

Pure: no sockets and no Redis, so it runs inline or in the helper process that
build_site.py starts, and the tests drive it with bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from imapclient.imap_utf7 import decode as decode_utf7

from email_ingestion.common.clock import Clock, wall_ms
from email_ingestion.common.errors import BudgetExceeded
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import Address, Attachment, EmailPayload, ParseError
from email_ingestion.common.text import iso_utc, to_text
from email_ingestion.imap import bodystructure
from email_ingestion.mail.parse import ParsedMessage, parse_message, parse_partial
from email_ingestion.mail.salvage import salvage
from email_ingestion.producer.budget import Watchdog
from email_ingestion.producer.identity import fingerprint

log = logging.getLogger(__name__)

TEXT_PARTS = "text_parts"  # key under which the fetcher keeps a large message's fetched text parts
# Time one message may take to build before it goes out degraded. Ordinary mail takes well
# under a millisecond, a 20 MB one a fraction of a second; hostile mail is cut off here.
MESSAGE_BUDGET_S = 5.0
# A payload lists this many attachments at most: 50,000 one-byte parts fit in a 3 MB message
# and would make a 4 MB stream entry.
MAX_LISTED_ATTACHMENTS = 1000

Stage = Literal["parse", "payload", "json"]
T = TypeVar("T")


@dataclass(frozen=True)
class Downloaded:
    """The raw FETCH responses of one batch, in UID order."""

    messages: list[tuple[int, dict[Any, Any]]]


@dataclass(frozen=True)
class Emission:
    """One message ready to append: its dedup fingerprint, UID and payload JSON."""

    fingerprint: str
    uid: int
    payload: str
    gmail_labels: tuple[str, ...] = ()  # as in the payload: the Gmail identity store keeps them (issue 20)


class PayloadBuilder:
    """Builds the payloads of one mailbox; CPU only.

    Each message is built on its own, under a time budget: whatever goes wrong with one
    (an exception anywhere, an overrun) gives a degraded payload for it (see
    common/payload.py), never a failed batch or a skipped message.
    """

    def __init__(self, *, account: str, mailbox: str, clock_ms: Clock = wall_ms,
                 budget_s: float = MESSAGE_BUDGET_S) -> None:
        self.account = account
        self.mailbox = mailbox
        self.clock_ms = clock_ms
        self.budget_s = budget_s
        self._watchdog = Watchdog(budget_s=budget_s)

    def build(self, downloaded: Downloaded, uidvalidity: int, pass_id: str) -> list[Emission]:
        return [self._emission(uid, data, uidvalidity, pass_id) for uid, data in downloaded.messages]

    def _emission(self, uid: int, data: dict[Any, Any], uidvalidity: int, pass_id: str) -> Emission:
        with correlation(f"{pass_id}.{uid}") as correlation_id:
            facts = _Facts.of(data)
            stage: list[Stage] = ["parse"]
            try:
                with self._watchdog.guard():
                    parsed = _parse(data, facts.size)
                    stage[0] = "payload"
                    payload = self.payload(uid, uidvalidity, data, parsed, facts, correlation_id)
                    stage[0] = "json"
                    text = _to_json(payload)
            except (Exception, BudgetExceeded) as exc:  # noqa: BLE001 - issue 9: one message never stops a mailbox
                parsed, text = self._degraded(uid, uidvalidity, data, facts, correlation_id, stage[0], exc)
            if parsed.defects:
                log.info("message parsed with defects", extra={"uid": uid, "defects": parsed.defects[:10]})
            return Emission(_fingerprint_of(data, facts), uid, text, tuple(facts.labels))

    def _degraded(self, uid: int, uidvalidity: int, data: dict[Any, Any], facts: _Facts, correlation_id: str,
                  stage: Stage, exc: BaseException) -> tuple[ParsedMessage, str]:
        reason = f"took longer than {self.budget_s} s" if isinstance(exc, BudgetExceeded) else _reason(exc)
        error = ParseError(stage=stage, type=type(exc).__name__, reason=reason)
        # No reason in the log: exception texts can quote message content.
        log.warning("message could not be parsed; delivering a degraded payload",
                    extra={"uid": uid, "stage": stage, "error_type": error.type})
        try:
            with self._watchdog.guard():  # salvage gets a budget of its own: it too reads hostile bytes
                parsed = salvage(data.get(b"BODY[]") or data.get(b"BODY[HEADER]") or b"")
                return parsed, _to_json(self.payload(uid, uidvalidity, data, parsed, facts, correlation_id, error))
        except (Exception, BudgetExceeded) as again:  # noqa: BLE001 - the last resort: no header at all, still delivered
            parsed = ParsedMessage(message_id=None, from_=None, to=[], cc=[], reply_to=[], subject=None, date=None,
                                   headers={}, body_truncated=True,
                                   defects=[f"headers unreadable: {type(again).__name__}"])
            return parsed, _to_json(self.payload(uid, uidvalidity, data, parsed, facts, correlation_id, error))

    def payload(self, uid: int, uidvalidity: int, data: dict[bytes, Any], parsed: ParsedMessage,
                facts: _Facts, correlation_id: str, parse_error: ParseError | None = None) -> EmailPayload:
        gm_msgid = facts.gm_msgid
        key = f"gm:{self.account}:{gm_msgid}" if gm_msgid else f"imap:{self.account}:{self.mailbox}:{uidvalidity}:{uid}"
        return EmailPayload(
            idempotency_key=key, account=self.account, mailbox=self.mailbox, uid=uid, uidvalidity=uidvalidity,
            message_id=parsed.message_id, gmail_msgid=gm_msgid, gmail_thrid=facts.gm_thrid,
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


@dataclass
class _Facts:
    """What the server said about a message (not its content), each read on its own."""

    size: int = 0
    internal: str | None = None
    gm_msgid: str | None = None
    gm_thrid: str | None = None
    labels: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, data: dict[Any, Any]) -> _Facts:
        facts = cls()
        raw = data.get(b"BODY[]")
        facts.size = facts._read("RFC822.SIZE", lambda: int(data.get(b"RFC822.SIZE", len(raw or b""))), 0)
        facts.internal = facts._read("INTERNALDATE", lambda: iso_utc(internal_date(data.get(b"INTERNALDATE"))), None)
        facts.gm_msgid = facts._read("X-GM-MSGID", lambda: gmail_id(data.get(b"X-GM-MSGID")), None)
        facts.gm_thrid = facts._read("X-GM-THRID", lambda: gmail_id(data.get(b"X-GM-THRID")), None)
        facts.labels = facts._read("X-GM-LABELS", lambda: sorted({_label(v) for v in data.get(b"X-GM-LABELS") or ()}), [])
        facts.flags = facts._read("FLAGS", lambda: [to_text(flag) for flag in data.get(b"FLAGS") or ()], [])
        return facts

    def _read(self, item: str, read: Callable[[], T], default: T) -> T:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - a broken item costs that item only
            self.defects.append(f"unreadable {item}: {type(exc).__name__}")
            return default


def _fingerprint_of(data: dict[Any, Any], facts: _Facts) -> str:
    """The dedup identity from the raw header bytes (whole message or BODY[HEADER]), as the
    re-sync's HEADER.FIELDS fetch computes it; any bytes get one, so no message is lost to it."""
    header = data.get(b"BODY[]") if TEXT_PARTS not in data else data.get(b"BODY[HEADER]")
    try:
        return fingerprint(header or b"", facts.size, facts.gm_msgid)
    except Exception:  # noqa: BLE001 - issue 9: one message never stops a mailbox
        return "x:" + hashlib.sha256(bytes(header or b"")).hexdigest()[:32]


def _parse(data: dict[Any, Any], size: int) -> ParsedMessage:
    return parse_message(data.get(b"BODY[]") or b"") if TEXT_PARTS not in data else _parse_large(data, size)


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


def _parse_large(data: dict[Any, Any], size: int) -> ParsedMessage:
    parts = list(bodystructure.walk(data.get(b"BODYSTRUCTURE") or ()))
    attachments = [p.attachment() for p in parts if not p.is_body_text]
    return parse_partial(data.get(b"BODY[HEADER]") or b"", data[TEXT_PARTS], attachments, size)


def _iso_ms(clock_ms: Callable[[], int]) -> str:
    return iso_utc(dt.datetime.fromtimestamp(clock_ms() / 1000, dt.UTC)) or ""


def _address(pair: tuple[str, str] | None) -> Address | None:
    return Address(name=pair[0], address=pair[1]) if pair else None


def _addresses(pairs: list[tuple[str, str]]) -> list[Address]:
    return [Address(name=name, address=address) for name, address in pairs]


def internal_date(value: Any) -> dt.datetime | None:
    """INTERNALDATE as an aware UTC datetime (plain UTC also pickles; imapclient's FixedOffset does not)."""
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def gmail_id(value: Any) -> str | None:
    return None if value is None else str(int(value)) if isinstance(value, int) else to_text(value)


def _label(value: Any) -> str:
    # Gmail labels are mailbox names: modified UTF-7 (RFC 3501 §5.1.3).
    return decode_utf7(value) if isinstance(value, bytes) else str(value)
