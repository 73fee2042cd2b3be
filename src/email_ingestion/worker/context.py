"""What a handler receives besides the payload.

Delivery is at least once: a handler may be called again for a message it has handled
(its worker lost Redis for longer than HEARTBEAT_TTL_MS, or was killed before settling).
`idempotency_key` is the same on every call for one message, whatever stream entry carries
it; `attempt` counts failed calls (1 on the first try), `deliveries` counts every time the
message was handed out, calls that never reported an outcome included. A handler makes its
effect idempotent by keying it on `idempotency_key` (docs/workers.md has an example).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass(slots=True)
class HandlerContext:
    idempotency_key: str
    attempt: int  # 1 on the first try; +1 per failed (raised) call before this one
    stream_id: str
    consumer: str
    logger: logging.Logger
    deliveries: int = 1  # times the message was handed out, this one included (MAX_DELIVERIES caps it)
