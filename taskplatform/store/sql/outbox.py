"""The outbox on SQL (a mixin of ``SqlTaskStore``): entries are columns of the task row, leased
with ``FOR UPDATE SKIP LOCKED`` so two relays never lease the same entry."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, update

from taskplatform.models import BackgroundTask, OutboxStatus, utcnow
from taskplatform.store.primitives import failed_lease_until
from taskplatform.store.sql import statements as sql
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.sql.schema import tasks


class SqlOutbox(SqlPart):
    """``claim_pending_outbox``, ``mark_published`` and ``record_publish_failure``."""

    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]:
        now = self.now()  # outbox leases are the store's time, like task leases
        claimable = and_(
            tasks.c.outbox_status == OutboxStatus.PENDING.value,
            tasks.c.created_at < created_before,
            or_(tasks.c.outbox_lease_until.is_(None), tasks.c.outbox_lease_until < now),
        )
        candidates = (
            select(tasks.c.id)
            .where(claimable)
            .order_by(tasks.c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if self.dialect == "postgresql":
            # Picked once: as an ``IN (subquery)`` PostgreSQL may plan a semi join that re-runs
            # the LIMIT … SKIP LOCKED subquery per row and so leases more than ``limit`` entries.
            picked = candidates.cte("picked").prefix_with("MATERIALIZED")
            chosen = tasks.c.id == picked.c.id
        else:  # SQLite runs an uncorrelated IN subquery once
            chosen = tasks.c.id.in_(candidates.scalar_subquery())
        stmt = (
            update(tasks)
            .where(chosen, claimable)
            .values(outbox_lease_until=lease_until, outbox_lease_owner=owner, version=tasks.c.version + 1)
            .returning(*tasks.columns)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        claimed = [self._to_task(r) for r in rows]
        claimed.sort(key=lambda t: t.created_at)
        return claimed

    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int:
        if not task_ids:
            return 0
        async with self._errors():
            if self._fast is not None:
                return await self._fast.mark_published(task_ids, owner=owner, now=utcnow())
            async with self.autocommit.connect() as conn:
                params = {"ids": list(task_ids), "owner": owner, "now": utcnow()}
                result = await conn.execute(sql.MARK_PUBLISHED, params)
        return int(result.rowcount)

    async def record_publish_failure(self, task_id: str, error: str, *, retry_in: float = 0.0) -> None:
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.outbox_status == OutboxStatus.PENDING.value)
            .values(
                outbox_attempts=tasks.c.outbox_attempts + 1,
                outbox_last_error=error[:2000],
                # free for a relay pass after retry_in, not after the lease; the owner stays, so a
                # late mark of an earlier publish cannot take this entry for published
                outbox_lease_until=failed_lease_until(self.now(), retry_in),
                version=tasks.c.version + 1,
            )
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                await conn.execute(stmt)
