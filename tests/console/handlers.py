"""A handler the browser test loads into a real worker process: messages whose subject starts
with "poison" fail permanently (to the DLQ), the rest succeed."""

from __future__ import annotations

from email_ingestion.common.errors import PermanentError
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.context import HandlerContext


def poison_subjects(payload: EmailPayload, ctx: HandlerContext) -> None:
    """Refuse "poison ..." subjects for good; accept everything else."""
    if (payload.subject or "").startswith("poison"):
        raise PermanentError("poison subject: cannot be handled")
