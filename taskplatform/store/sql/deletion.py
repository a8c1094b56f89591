"""Deleting finished tasks on SQL (a mixin of ``SqlTaskStore``): the primitives of
``taskplatform.store.deletion``."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select

from taskplatform.models import TERMINAL
from taskplatform.store.deletion import EXPIRING
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.sql.schema import task_attempts, task_rollups, tasks

_FINISHED = [s.value for s in TERMINAL]
_EXPIRING = [s.value for s in EXPIRING]


class SqlDeletion(SqlPart):
    """``_delete_finished`` and ``_finished_before`` over the store's engine."""

    async def _delete_finished(self, task_ids: Sequence[str]) -> builtins.list[str]:
        """One transaction: the finished tasks among ``task_ids``, then the ledger they kept."""
        if not task_ids:
            return []
        gone = (
            delete(tasks)
            .where(tasks.c.id.in_(list(task_ids)), tasks.c.status.in_(_FINISHED))
            .returning(tasks.c.id)
        )
        async with self._errors():
            async with self.engine.begin() as conn:
                deleted = list((await conn.execute(gone)).scalars())
                if deleted:
                    await conn.execute(delete(task_rollups).where(task_rollups.c.parent_id.in_(deleted)))
                    await conn.execute(delete(task_attempts).where(task_attempts.c.task_id.in_(deleted)))
        return deleted

    async def _finished_before(self, before: datetime, limit: int) -> builtins.list[str]:
        query = (
            select(tasks.c.id)
            .where(tasks.c.completed_at < before, tasks.c.status.in_(_EXPIRING))
            .order_by(tasks.c.completed_at)
            .limit(limit)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                return list((await conn.execute(query)).scalars())
