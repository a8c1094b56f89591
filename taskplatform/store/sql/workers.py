"""The worker registry on SQL (a mixin of ``SqlTaskStore``): one row per worker in ``workers``.

A beat is one ``INSERT … ON CONFLICT (node_id) DO UPDATE … RETURNING previous_state``: SET
expressions see the row as it was, so ``previous_state = workers.state`` keeps the state the
beat replaced (NULL on an insert) and the statement returns it, atomically on PostgreSQL and
SQLite alike. The sweep is one ``UPDATE … WHERE state IN (present) AND expires_at <= :now …
RETURNING``: each row moves once, whoever runs it (PostgreSQL re-checks the condition on a row
another sweep or a beat changed meanwhile; SQLite runs one write at a time), and a beat that
landed first has moved ``expires_at`` out of reach.

Labels are matched in the query on ``label_set`` (``|key=value|…|``, sorted): ``|key=value|`` is
searched as a plain substring (``strpos`` on PostgreSQL, ``instr`` on SQLite), with no pattern
characters at all, so ``_`` and ``%`` are themselves, and case-sensitively (SQLite's ``LIKE`` is
not); the bars keep ``role=db`` from matching ``xrole=db`` or ``role=db2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, func, not_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.sql.schema import UTCDateTime, workers
from taskplatform.store.types import check_page_size
from taskplatform.store.workers import (
    GONE_STATES,
    PRESENT_STATES,
    WorkerFilter,
    WorkerPage,
    check_batch,
    decode_worker_cursor,
    encode_worker_cursor,
    label_pairs,
)

_w = workers.c
#: Columns of the table that are not fields of the record.
_STORE_ONLY = ("label_set", "previous_state")
_RECORD_COLUMNS = [c for c in workers.columns if c.name not in _STORE_ONLY]


def _label_set(labels: Mapping[str, str]) -> str:
    """``|key=value|key=value|`` (sorted by key; ``||`` for none)."""
    return "|" + "|".join(label_pairs(labels)) + "|"


def _row(record: WorkerRecord) -> dict[str, Any]:
    row = record.model_dump(mode="python")
    row["state"] = record.state.value
    row["label_set"] = _label_set(record.labels)
    return row


def _record(row: Any) -> WorkerRecord:
    data = {c.name: row._mapping[c.name] for c in _RECORD_COLUMNS}
    return WorkerRecord.model_validate(data)


def _beat_statement(dialect: str) -> Any:
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = dialect_insert(workers)
    kept = ("node_id", "previous_state")
    written = {c.name: stmt.excluded[c.name] for c in workers.columns if c.name not in kept}
    return stmt.on_conflict_do_update(
        index_elements=[_w.node_id],
        set_={**written, "previous_state": _w.state},  # SET sees the old row: the state replaced
    ).returning(_w.previous_state)


def _sweep_statement() -> Any:
    now = bindparam("now", type_=UTCDateTime())
    expired = and_(_w.state.in_(PRESENT_STATES), _w.expires_at <= now)
    oldest = select(_w.node_id).where(expired).order_by(_w.expires_at, _w.node_id).limit(bindparam("limit"))
    # The condition again on the rows themselves: a row a beat or another sweep changed after the
    # subquery chose it is re-checked (PostgreSQL) and left alone.
    return (
        update(workers)
        .where(_w.node_id.in_(oldest), expired)
        .values(state=WorkerState.OFFLINE.value, state_changed_at=now)
        .returning(*_RECORD_COLUMNS)
    )


def _prune_statement() -> Any:
    before = bindparam("before", type_=UTCDateTime())
    gone = and_(_w.state.in_(GONE_STATES), _w.last_seen_at < before)
    oldest = select(_w.node_id).where(gone).order_by(_w.last_seen_at, _w.node_id).limit(bindparam("limit"))
    return delete(workers).where(_w.node_id.in_(oldest), gone)  # a beat in between keeps its row


#: Built once, like the hot-path statements (``statements``).
_BEAT = {dialect: _beat_statement(dialect) for dialect in ("postgresql", "sqlite")}
_SWEEP = _sweep_statement()
_PRUNE = _prune_statement()


class SqlWorkers(SqlPart):
    """The worker registry over the store's engine (``taskplatform.store.workers``)."""

    async def beat_worker(self, record: WorkerRecord) -> WorkerState | None:
        """Write ``record`` whole, by node id; the state the stored record had before (None: new)."""
        async with self._errors():
            async with self.autocommit.connect() as conn:
                previous = (await conn.execute(_BEAT[self.dialect], _row(record))).scalar_one()
        return WorkerState(previous) if previous is not None else None

    async def get_worker(self, node_id: str) -> WorkerRecord | None:
        """The record, or None."""
        query = select(*_RECORD_COLUMNS).where(_w.node_id == node_id)
        async with self._errors():
            async with self.autocommit.connect() as conn:
                row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None

    async def list_workers(
        self, filters: WorkerFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> WorkerPage:
        """A page of records by node id, ascending."""
        check_page_size(limit)
        clauses = self._worker_clauses(filters or WorkerFilter())
        if cursor:
            clauses.append(_w.node_id > decode_worker_cursor(cursor))
        query = select(*_RECORD_COLUMNS).where(and_(true(), *clauses)).order_by(_w.node_id).limit(limit + 1)
        async with self._errors():
            async with self.autocommit.connect() as conn:
                found = (await conn.execute(query)).all()
        items = [_record(row) for row in found[:limit]]
        next_cursor = encode_worker_cursor(items[-1].node_id) if len(found) > limit else None
        return WorkerPage(items=items, next_cursor=next_cursor)

    def _worker_clauses(self, filters: WorkerFilter) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if filters.online is not None:
            present = and_(_w.state.in_(PRESENT_STATES), _w.expires_at > self.now())
            clauses.append(present if filters.online else not_(present))
        if filters.state is not None:
            clauses.append(_w.state == filters.state.value)
        if filters.host is not None:
            clauses.append(_w.host == filters.host)
        position = func.strpos if self.dialect == "postgresql" else func.instr
        for pair in label_pairs(filters.labels):
            clauses.append(position(_w.label_set, f"|{pair}|") > 0)
        return clauses

    async def sweep_offline_workers(self, *, now: datetime, limit: int = 100) -> list[WorkerRecord]:
        """Move present records expired at ``now`` to ``offline``; the records moved (by this call)."""
        params = {"now": now, "limit": check_batch(limit)}
        async with self._errors():
            async with self.autocommit.connect() as conn:
                moved = (await conn.execute(_SWEEP, params)).all()
        return sorted((_record(row) for row in moved), key=lambda r: r.node_id)

    async def prune_workers(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete ``stopped``/``offline`` records last seen before ``before``; how many."""
        params = {"before": before, "limit": check_batch(limit)}
        async with self._errors():
            async with self.autocommit.connect() as conn:
                result = await conn.execute(_PRUNE, params)
        return int(result.rowcount)
