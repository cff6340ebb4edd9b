"""Webhook deliveries: the outbox rows a dispatcher claims, sends and records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from modelplex.records import Delivery, DeliveryStatus, NewDelivery
from modelplex.storage.sql.base import SqlBase
from modelplex.storage.sql.rows import delivery_from_row
from modelplex.storage.sql.schema import deliveries


class DeliveryQueries(SqlBase):
    @staticmethod
    async def _insert_deliveries(
        conn: AsyncConnection, job_id: str, items: Sequence[NewDelivery], now: float
    ) -> None:
        """Called inside the transaction of the change that causes them."""
        if not items:
            return
        await conn.execute(
            insert(deliveries),
            [
                {
                    "id": d.id,
                    "job_id": job_id,
                    "event": d.event,
                    "url": d.url,
                    "payload": d.payload,
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": [],
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for d in items
            ],
        )

    async def claim_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        """Only the oldest PENDING delivery of each job (by id: the order its events
        happened in) can be claimed, so a job's events go out one at a time, in order,
        whatever dispatcher claims them; one delivered or given up lets the next go."""
        now = self._clock()
        earlier = deliveries.alias("earlier")
        waits_for_earlier = (
            select(earlier.c.id)
            .where(
                earlier.c.job_id == deliveries.c.job_id,
                earlier.c.status == DeliveryStatus.PENDING.value,
                earlier.c.id < deliveries.c.id,
            )
            .exists()
        )
        candidates = (
            select(deliveries.c.id)
            .where(
                deliveries.c.status == DeliveryStatus.PENDING.value,
                deliveries.c.next_attempt_at <= now,
                or_(deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at < now),
                ~waits_for_earlier,
            )
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self._tx() as conn:
            due = list((await conn.execute(candidates)).scalars().all())
            if not due:
                return []
            statement = (
                update(deliveries)
                .where(deliveries.c.id.in_(due))
                .values(lease_owner=owner, lease_expires_at=now + lease_s)
                .returning(*deliveries.c)
            )
            rows = (await conn.execute(statement)).all()
        return [delivery_from_row(r) for r in rows]

    async def record_delivery(
        self,
        delivery_id: str,
        owner: str,
        attempts: list[dict[str, Any]],
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        """False if the lease passed to another dispatcher meanwhile."""
        statement = (
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.lease_owner == owner)
            .values(
                attempts=attempts,
                status=status.value,
                next_attempt_at=next_attempt_at,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        async with self._tx() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def list_deliveries(self, job_id: str) -> list[Delivery]:
        query = select(deliveries).where(deliveries.c.job_id == job_id).order_by(deliveries.c.id)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [delivery_from_row(r) for r in rows]
