"""What happens when a call passes HANDLER_TIMEOUT_SECONDS and the GIL is free (the soft
deadline, deadline.py): record the call as failed with reason `timeout`, settle what the
batch has done, give back the leases of the batch-mates not yet called, delete the
heartbeat, and end the process with exit 1 for its supervisor to restart it.

Python cannot stop the hung thread, so the process must go: this runs on the deadline's
thread while the hung call still holds its stack. Every failure on the way out is logged
and the exit happens anyway; the settlement is tried for TIMEOUT_SETTLE_S, and a replica
shortfall (REDIS_WAIT_REPLICAS) after it landed is a warning, not a hang (issue 19 item 12).
The kernel timer (kernel_timer.py) was pushed back by the deadline to cover this time.
"""

from __future__ import annotations

import logging
import os

from email_ingestion.common.errors import HandlerTimeoutError
from email_ingestion.common.exits import EXIT_FAILED
from email_ingestion.worker.batch import Leased, Settlement
from email_ingestion.worker.deadline import TIMEOUT_SETTLE_S
from email_ingestion.worker.describe import describe
from email_ingestion.worker.outcomes import Outcomes
from email_ingestion.worker.recovery import Recovery
from email_ingestion.worker.settle import Settler

log = logging.getLogger("email_ingestion.worker.processor")


class TimeoutExit:
    def __init__(self, *, outcomes: Outcomes, settler: Settler, recovery: Recovery, handler_timeout_s: float) -> None:
        self.outcomes = outcomes
        self.settler = settler
        self.recovery = recovery
        self.handler_timeout_s = handler_timeout_s

    def __call__(self, batch: Settlement, to_handle: list[Leased], index: int) -> None:
        """The call on to_handle[index] is hung: settle, and end the process. Never returns."""
        try:
            log.error("handler call timed out; the process exits for its supervisor to restart it "
                      "(every stream it reads: their batches in hand are reclaimed)", extra={
                          "stream_id": to_handle[index].delivery.entry_id,
                          "handler_timeout_s": self.handler_timeout_s})
            error = describe(HandlerTimeoutError(f"handler still running after {self.handler_timeout_s} s"))
            self.outcomes.failed(batch, to_handle[index], error, timed_out=True)
            self.outcomes.release(batch, to_handle[index + 1:])
            if self.settler.settle_before_exit(batch, TIMEOUT_SETTLE_S):
                self.recovery.stop_beating()
        except Exception:
            log.exception("the timeout path failed; exiting anyway")
        finally:
            logging.shutdown()
            os._exit(EXIT_FAILED)
