"""The read step's check of what was read: a message delivered MAX_DELIVERIES times without
an outcome (it keeps killing its worker) or whose payload fails the schema goes to the DLQ
without a call; copies of one message in one batch are handled once."""

from __future__ import annotations

from pydantic import ValidationError

from email_ingestion.common.payload import EmailPayload
from email_ingestion.worker.batch import Leased, Settlement
from email_ingestion.worker.delivery import Delivery
from email_ingestion.worker.describe import ErrorDescription
from email_ingestion.worker.idempotency import lease_value
from email_ingestion.worker.outcomes import Outcomes


class Admission:
    def __init__(self, *, consumer: str, max_deliveries: int, outcomes: Outcomes) -> None:
        self.consumer = consumer
        self.max_deliveries = max_deliveries
        self.outcomes = outcomes

    def admit(self, deliveries: list[Delivery], batch: Settlement) -> list[Leased]:
        """The deliveries to lease, first copy of each message only."""
        admitted = [c for c in (self._admit(d, batch) for d in deliveries) if c is not None]
        return self._first_of_each_key(admitted, batch)

    def _admit(self, delivery: Delivery, batch: Settlement) -> Leased | None:
        if delivery.delivered > self.max_deliveries:
            self.outcomes.dead(batch, delivery, "max_deliveries", ErrorDescription(
                "MaxDeliveriesExceeded", f"delivered {delivery.delivered - 1} times without an outcome "
                "(the handler keeps killing its worker?)", ""))
            return None
        try:
            payload = EmailPayload.from_json(delivery.payload)
        except ValidationError as exc:
            self.outcomes.dead(batch, delivery, "invalid_payload", ErrorDescription("ValidationError", _short(exc), ""))
            return None
        return Leased(delivery, payload, lease_value(self.consumer, delivery.entry_id))

    def _first_of_each_key(self, candidates: list[Leased], batch: Settlement) -> list[Leased]:
        seen: set[str] = set()
        first = []
        for leased in candidates:
            if leased.payload.idempotency_key in seen:
                self.outcomes.duplicate(leased, batch)
            else:
                seen.add(leased.payload.idempotency_key)
                first.append(leased)
        return first


def _short(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(part) for part in first["loc"])
    return f"payload failed schema validation ({len(errors)} errors); first: {where}: {first['msg']}"
