"""Webhook deliveries of the `MemoryStore`: its outbox, claimed and recorded under a
dispatcher's lease (the SQL store's `deliveries.py`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from modelplex.records import Clock, Delivery, DeliveryStatus, NewDelivery


@dataclass(slots=True)
class OutboxEntry:
    """A delivery and its dispatcher's lease (the record itself has no lease)."""

    delivery: Delivery
    lease: tuple[str, float] | None = None  # owner, expires at

    def due(self, now: float) -> bool:
        """PENDING, due, and held by nobody (or by a dispatcher whose lease expired)."""
        d, free = self.delivery, self.lease is None or self.lease[1] < now
        return d.status is DeliveryStatus.PENDING and d.next_attempt_at <= now and free


class MemoryOutbox:
    _clock: Clock
    _outbox: dict[str, OutboxEntry]

    def _write_outbox(self, job_id: str, items: Sequence[NewDelivery], now: float) -> None:
        """Called only once the change that causes them has happened."""
        for item in items:
            delivery = Delivery(
                id=item.id, job_id=job_id, event=item.event, url=item.url,
                payload=deepcopy(item.payload), status=DeliveryStatus.PENDING, attempts=[],
                next_attempt_at=now, created_at=now,
            )  # fmt: skip
            self._outbox[delivery.id] = OutboxEntry(delivery)

    async def claim_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        """Only the oldest PENDING delivery of each job (the SQL store's rule)."""
        now = self._clock()
        oldest: dict[str, str] = {}
        for entry in self._outbox.values():
            d = entry.delivery
            if d.status is DeliveryStatus.PENDING:
                oldest[d.job_id] = min(d.id, oldest.get(d.job_id, d.id))
        due = [o for o in self._outbox.values() if o.due(now)]
        due = [o for o in due if oldest[o.delivery.job_id] == o.delivery.id]
        due = sorted(due, key=lambda o: (o.delivery.next_attempt_at, o.delivery.id))[:limit]
        for outbox in due:
            outbox.lease = (owner, now + lease_s)
        return [deepcopy(o.delivery) for o in due]

    async def record_delivery(
        self,
        delivery_id: str,
        owner: str,
        attempts: list[dict[str, Any]],
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        outbox = self._outbox.get(delivery_id)
        if outbox is None or outbox.lease is None or outbox.lease[0] != owner:
            return False
        # A delivery's status is the dispatcher's verdict, not a state machine with
        # a table (SQL writes it unguarded too): the lease is the only guard.
        outbox.delivery = dataclasses.replace(
            outbox.delivery, attempts=deepcopy(attempts), status=status,
            next_attempt_at=next_attempt_at,
        )  # fmt: skip
        outbox.lease = None
        return True

    async def list_deliveries(self, job_id: str) -> list[Delivery]:
        mine = [o.delivery for o in self._outbox.values() if o.delivery.job_id == job_id]
        return [deepcopy(d) for d in sorted(mine, key=lambda d: d.id)]
