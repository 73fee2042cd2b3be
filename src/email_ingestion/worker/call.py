"""The call step: one handler call, whatever the handler does, comes back as a CallOutcome.

A handler may return, raise an Exception, raise a PermanentError, or raise what is not an
Exception at all: SystemExit (argparse on odd input), KeyboardInterrupt, GeneratorExit.
Each is the outcome of that one message (issue 19 item 5): nothing a handler raises leaves
this step, so it cannot end a stream's loop or the process, and the batch-mates' outcomes
are settled. The error is described (describe.py) inside the call's deadline, so even a
`__str__` that hangs is a timeout, not a stuck worker.

Observers (`after_call`) see every outcome and may replace it: the seam for the handler
circuit breaker, which must notice consecutive failures and may mark an outage failure as
not counting toward MAX_RETRIES. A failing observer is logged, not fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from email_ingestion.common.errors import PermanentError
from email_ingestion.common.logging import correlation
from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.batch import Leased
from email_ingestion.worker.context import HandlerContext
from email_ingestion.worker.deadline import CallWatch
from email_ingestion.worker.describe import ErrorDescription, describe
from email_ingestion.worker.handlers import Handler

log = logging.getLogger(__name__)
handler_log = logging.getLogger("email_ingestion.worker.handler")


@dataclass(slots=True)
class CallOutcome:
    """What one handler call came to (not frozen: built once per message on the hot path;
    observers return a changed copy, `replace`, rather than change it)."""

    leased: Leased
    error: ErrorDescription | None  # None: the handler returned
    permanent: bool = False  # it raised PermanentError: straight to the DLQ
    timed_out: bool = False
    duration_s: float = 0.0
    counts_toward_retries: bool = True  # False: an outage's failure, retried without using an attempt

    @property
    def ok(self) -> bool:
        return self.error is None

    def replace(self, **changes: object) -> CallOutcome:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


OutcomeObserver = Callable[[CallOutcome], CallOutcome | None]


class HandlerCall:
    def __init__(self, *, handler: Handler, consumer: str) -> None:
        self.handler = handler
        self.consumer = consumer
        self.observers: list[OutcomeObserver] = []

    def after_call(self, observer: OutcomeObserver) -> None:
        """Run `observer` on every outcome; if it returns an outcome, that one is recorded."""
        self.observers.append(observer)

    def __call__(self, leased: Leased, watch: CallWatch, index: int) -> CallOutcome:
        delivery, payload = leased.delivery, leased.payload
        with correlation(payload.correlation_id):
            ctx = HandlerContext(payload.idempotency_key, delivery.attempt + 1, delivery.entry_id,
                                 self.consumer, handler_log, delivery.delivered)
            started = time.perf_counter()
            watch.calling(index)
            try:
                error = _call(self.handler, payload, ctx)
                described = None if error is None else describe(error)
            finally:
                watch.called()
            outcome = CallOutcome(leased, described, isinstance(error, PermanentError),
                                  duration_s=time.perf_counter() - started)
        return self._observed(outcome) if self.observers else outcome

    def _observed(self, outcome: CallOutcome) -> CallOutcome:
        for observer in self.observers:
            try:
                outcome = observer(outcome) or outcome
            except Exception:
                log.exception("an outcome observer failed; the outcome stands")
        return outcome


def _call(handler: Handler, payload: EmailPayload, ctx: HandlerContext) -> BaseException | None:
    try:
        handler(payload, ctx)
    except BaseException as exc:  # noqa: BLE001 - whatever a handler raises is its message's outcome
        return exc
    return None
