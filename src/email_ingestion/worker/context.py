"""What a handler receives besides the payload."""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass(slots=True)
class HandlerContext:
    idempotency_key: str
    attempt: int  # 1 on the first try
    stream_id: str
    consumer: str
    logger: logging.Logger
