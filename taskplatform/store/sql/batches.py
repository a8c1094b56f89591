"""Claims and completions in batches on SQL (a mixin of ``SqlTaskStore``): one statement for a
whole batch on PostgreSQL (the asyncpg fast path), prebuilt statements on SQLite; the guards are
those of ``try_set_running`` and ``record_completion`` (see ``statements``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from taskplatform.models import BackgroundTask, utcnow
from taskplatform.store.sql import statements as sql
from taskplatform.store.sql.history import attempt_insert, attempt_row
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.types import ClaimRequest, CompletionRequest


class SqlBatches(SqlPart):
    """``try_set_running_many`` and ``record_completions`` in one round trip."""

    async def try_set_running_many(
        self, claims: Sequence[ClaimRequest], *, node_id: str, lease_until: datetime
    ) -> dict[str, BackgroundTask]:
        """One statement for the whole batch (see ``statements``)."""
        if not claims:
            return {}
        async with self._errors():
            if self._fast is not None:
                rows: Any = await self._fast.claim_many(
                    [c.task_id for c in claims],
                    [c.attempt for c in claims],
                    [c.priority for c in claims],
                    node_id=node_id,
                    lease_until=lease_until,
                    now=utcnow(),
                    takeover_before=self.now(),  # leases are the store's time
                    task_types=[c.task_type for c in claims],
                    generations=[c.generation for c in claims],
                )
            else:
                # SQLite: the store's clock is this machine's (offset 0), one value serves both
                params = {"node": node_id, "lease": lease_until, "now": self.now()}
                if all(c.task_type is not None and c.generation is not None for c in claims):
                    statement = sql.CLAIM_MANY_CHECKED
                    params["claims"] = [
                        (c.task_id, c.attempt, c.priority, c.task_type, c.generation) for c in claims
                    ]
                else:
                    statement = sql.CLAIM_MANY
                    params["claims"] = [(c.task_id, c.attempt, c.priority) for c in claims]
                async with self.autocommit.connect() as conn:
                    rows = (await conn.execute(statement, params)).all()
        return {t.id: t for t in map(self._to_task, rows)}

    async def record_completions(self, items: Sequence[CompletionRequest], *, node_id: str) -> dict[str, int]:
        """PostgreSQL: one statement for the batch; SQLite: a prebuilt statement per item."""
        if not items:
            return {}
        now = utcnow()
        async with self._errors():
            if self._fast is not None:
                return await self._fast.complete_many(
                    [i.task_id for i in items],
                    [i.attempt for i in items],
                    [i.result and dict(i.result) for i in items],
                    [i.event_id for i in items],
                    [i.progress and dict(i.progress) for i in items],
                    node_id=node_id,
                    now=now,
                    records=[i.attempt_record for i in items if i.attempt_record is not None],
                )
            async with self.autocommit.connect() as conn:
                done: dict[str, int] = {}
                for i in items:
                    params_one = {
                        "task_id": i.task_id,
                        "attempt": i.attempt,
                        "node": node_id,
                        "now": now,
                        "result_value": i.result and dict(i.result),
                        "event_id": i.event_id,
                        "progress_value": i.progress and dict(i.progress),
                    }
                    for task_id, version in (await conn.execute(sql.COMPLETE_ONE, params_one)).all():
                        done[task_id] = version
                        if i.attempt_record is not None:
                            await conn.execute(attempt_insert(self.dialect), attempt_row(i.attempt_record))
                return done
