"""The attempt history on SQL (a mixin of ``SqlTaskStore``): one row per attempt in
``task_attempts``, deleted with its task (``SqlDeletion``)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite

from taskplatform.models.attempt import MAX_ATTEMPTS_KEPT, AttemptRecord
from taskplatform.store.history import oldest_first, storable_attempt
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.sql.schema import task_attempts

_a = task_attempts.c


def attempt_row(record: AttemptRecord) -> dict[str, Any]:
    """``record`` as a row of ``task_attempts``."""
    row = storable_attempt(record).model_dump(mode="python")
    row["outcome"] = record.outcome.value
    return row


def attempt_insert(dialect: str) -> Insert:
    """An insert of attempt rows that leaves a row whose id is stored already as it is."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(task_attempts).on_conflict_do_nothing(index_elements=[_a.id])


class SqlAttemptHistory(SqlPart):
    """``add_attempts`` and ``list_attempts`` over the store's engine."""

    async def add_attempts(self, records: Sequence[AttemptRecord]) -> None:
        if not records:
            return
        rows = [attempt_row(record) for record in records]
        async with self._errors():
            async with self.engine.begin() as conn:
                await conn.execute(attempt_insert(self.dialect), rows)

    async def list_attempts(
        self, task_id: str, *, limit: int = MAX_ATTEMPTS_KEPT
    ) -> builtins.list[AttemptRecord]:
        query = (
            select(task_attempts)
            .where(_a.task_id == task_id)
            .order_by(_a.ended_at.desc(), _a.id.desc())
            .limit(max(0, limit))
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                rows = (await conn.execute(query)).all()
        return oldest_first([AttemptRecord.model_validate(dict(r._mapping)) for r in rows], limit)
