"""The parent roll-up on SQL: the ledger table and the parent's counts in one transaction.

The parent row is locked first (PostgreSQL ``SELECT … FOR UPDATE``; SQLite transactions
begin IMMEDIATE, holding the database's write lock), so every roll-up into one parent is
serialised; then the ledger rows of the children are read, the new counts computed
(``taskplatform.store.rollup.fold``) and ledger and parent written before the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from taskplatform.models import SubTaskStatusSummary
from taskplatform.store.rollup import LedgerEntry, RollupItem, check_child_id, fold
from taskplatform.store.sql.schema import task_rollups, tasks
from taskplatform.store.types import PARENT_FIELDS

_PARENT_COLUMNS = [tasks.c[name] for name in PARENT_FIELDS]

_LEDGER_INSERT = insert(task_rollups)
_LEDGER_UPDATE = (
    update(task_rollups)
    .where(task_rollups.c.child_id == bindparam("b_child"))
    .values(bucket=bindparam("b_bucket"), version=bindparam("b_version"))
)


async def _ledger(conn: AsyncConnection, parent_id: str, child_ids: Sequence[str]) -> dict[str, LedgerEntry]:
    query = select(task_rollups).where(task_rollups.c.child_id.in_(child_ids))
    entries: dict[str, LedgerEntry] = {}
    for row in (await conn.execute(query)).all():
        if row.parent_id != parent_id:
            raise ValueError(f"task {row.child_id} is a child of {row.parent_id}, not of {parent_id}")
        entries[row.child_id] = LedgerEntry(row.bucket, row.version)
    return entries


async def apply_rollups(
    conn: AsyncConnection,
    parent_id: str,
    items: Sequence[RollupItem],
    *,
    now: datetime,
) -> Row[Any] | None:
    """Roll ``items`` up into ``parent_id`` inside the caller's transaction on ``conn``.

    Returns the parent's ``PARENT_FIELDS`` after, or None if there is no such parent.
    """
    for child_id, _status, _version in items:
        check_child_id(child_id)
    locked = select(*_PARENT_COLUMNS).where(tasks.c.id == parent_id).with_for_update()
    row = (await conn.execute(locked)).first()
    if row is None:
        return None
    stored = row.sub_task_status_summary
    summary = SubTaskStatusSummary.model_validate(stored) if stored is not None else None
    ledger = await _ledger(conn, parent_id, sorted({c for c, _, _ in items}))
    outcome = fold(summary, ledger, items)
    new = [
        {"child_id": c, "parent_id": parent_id, "bucket": e.bucket, "version": e.version}
        for c, e in outcome.written.items()
        if c not in ledger
    ]
    moved = [
        {"b_child": c, "b_bucket": e.bucket, "b_version": e.version}
        for c, e in outcome.written.items()
        if c in ledger
    ]
    if new:
        await conn.execute(_LEDGER_INSERT, new)
    if moved:
        await conn.execute(_LEDGER_UPDATE, moved)
    if not outcome.counts_changed:
        return row
    assert outcome.summary is not None  # counts changed, so there is a summary
    stmt = (
        update(tasks)
        .where(tasks.c.id == parent_id)
        .values(
            sub_task_status_summary=outcome.summary.model_dump(mode="json"),
            version=tasks.c.version + 1,
            updated_at=now,
        )
        .returning(*_PARENT_COLUMNS)
    )
    return (await conn.execute(stmt)).first()
