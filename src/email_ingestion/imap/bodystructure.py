"""Reading IMAP BODYSTRUCTURE (RFC 3501 §7.4.2) as imapclient returns it.

Used for large messages: we learn which parts are the text bodies and which are
attachments without downloading them, then fetch only the start of the text parts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from email_ingestion.common.text import to_text
from email_ingestion.mail.decode import decode_header_value
from email_ingestion.mail.mime import LinearMessage
from email_ingestion.mail.parse import AttachmentInfo


@dataclass(frozen=True)
class PartInfo:
    section: str
    content_type: str
    params: dict[str, str]
    encoding: str
    size: int
    disposition: str | None
    disposition_params: dict[str, str]

    @property
    def is_body_text(self) -> bool:
        return self.content_type in ("text/plain", "text/html") and self.disposition != "attachment" \
            and self.filename is None

    @property
    def charset(self) -> str | None:
        return self.params.get("charset")

    @property
    def filename(self) -> str | None:
        return _filename(self.params, self.disposition_params)

    def attachment(self) -> AttachmentInfo:
        # BODYSTRUCTURE gives the encoded size. Base64 is 4 characters per 3 bytes, in
        # lines of 76 characters plus CRLF (RFC 2045 §6.8): decoded = encoded * 3/4 * 76/78.
        size = self.size * 57 // 78 if self.encoding == "base64" else self.size
        return AttachmentInfo(self.filename, self.content_type, size)


def walk(structure: Any, prefix: str = "") -> Iterator[PartInfo]:
    """Every leaf part with its section number ("1", "1.2", ...), in order."""
    if _is_multipart(structure):
        for index, child in enumerate(structure[0], start=1):
            yield from walk(child, f"{prefix}{index}.")
        return
    yield _leaf(structure, prefix.rstrip(".") or "1")


def body_text_parts(parts: Sequence[PartInfo]) -> list[PartInfo]:
    """The first text/plain and the first text/html body part: what a large message's
    payload shows of its body (fetched partially; attachments stay on the server)."""
    chosen: dict[str, PartInfo] = {}
    for part in parts:
        if part.is_body_text:
            chosen.setdefault(part.content_type, part)
    return list(chosen.values())


def _is_multipart(structure: Any) -> bool:
    return bool(structure) and isinstance(structure[0], list)


def _leaf(fields: Any, section: str) -> PartInfo:
    major, minor = to_text(fields[0]).lower(), to_text(fields[1]).lower()
    content_type = f"{major}/{minor}"
    # Extension data starts after the basic fields, plus `lines` for text/* and
    # envelope, body and lines for message/rfc822.
    extra = 1 if major == "text" else 3 if content_type == "message/rfc822" else 0
    disposition = _at(fields, 8 + extra)
    disp_name, disp_params = None, {}
    if isinstance(disposition, tuple) and disposition:
        disp_name = to_text(disposition[0]).lower()
        disp_params = _params(disposition[1] if len(disposition) > 1 else None)
    return PartInfo(
        section=section, content_type=content_type, params=_params(_at(fields, 2)),
        encoding=to_text(_at(fields, 5) or b"7bit").lower(), size=int(_at(fields, 6) or 0),
        disposition=disp_name, disposition_params=disp_params,
    )


def _at(fields: Any, index: int) -> Any:
    return fields[index] if len(fields) > index else None


def _params(raw: Any) -> dict[str, str]:
    if not isinstance(raw, (tuple, list)):
        return {}
    items = list(raw)
    return {to_text(k).lower(): to_text(v) for k, v in zip(items[::2], items[1::2], strict=False)}


def _filename(params: dict[str, str], disp_params: dict[str, str]) -> str | None:
    # Let the email package apply RFC 2231 (filename*, continuations) exactly as it does for
    # whole messages, by handing it the parameters as headers.
    msg = LinearMessage()
    if disp_params:
        msg["Content-Disposition"] = "attachment" + "".join(_param(k, v) for k, v in disp_params.items())
    if params:
        msg["Content-Type"] = "application/octet-stream" + "".join(_param(k, v) for k, v in params.items())
    try:
        name = msg.get_filename()
    except (ValueError, LookupError, TypeError):
        return None
    return decode_header_value(str(name)) if name is not None else None


def _param(key: str, value: str) -> str:
    if key.endswith("*"):
        return f"; {key}={value}"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'; {key}="{escaped}"'
