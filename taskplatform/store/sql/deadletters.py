"""Dead-letter records and the audit log on SQL (a mixin of ``SqlTaskStore``).

A record is one row: the whole record as JSON but its body, the body as bytes (``body``, a
binary column: any bytes, NUL included), and the fields that lists filter and sort on as real,
indexed columns, all written by one statement. Changes are a compare-and-set on
``version`` (``UPDATE … WHERE id = :id AND version = :expected``); an insert of a taken id
does nothing (``ON CONFLICT DO NOTHING``) and says so.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from taskplatform.errors import DuplicateEntryError, DuplicateTaskError
from taskplatform.models import AuditEntry, DeadLetter
from taskplatform.models.dead_letter import body_in
from taskplatform.store.deadletters import (
    EQUALITY_FIELDS,
    AuditFilter,
    AuditPage,
    DeadLetterCounts,
    DeadLetterFilter,
    DeadLetterOperations,
    DeadLetterPage,
    audit_filter,
    counts_of,
    normalized,
    normalized_entry,
    storable_entry,
)
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.sql.schema import (
    audit_task_targets,
    dead_letter_audit,
    dead_letter_audit_targets,
    dead_letters,
)
from taskplatform.store.types import check_page_size, decode_cursor, encode_cursor

_dl = dead_letters.c
_audit = dead_letter_audit.c


def _row(record: DeadLetter) -> dict[str, Any]:
    """The columns of ``record`` (all but the id)."""
    return {
        "task_id": record.task_id,
        "task_type": record.task_type,
        "user_id": record.user_id,
        "reason": record.reason,
        "error_type": record.error_type,
        "status": record.status.value,
        "generation": record.generation,
        "first_seen_at": record.first_seen_at,
        "last_seen_at": record.last_seen_at,
        "version": record.version,
        "record": record.model_dump(mode="json", exclude={"body"}),
        "body": record.body_bytes(),
    }


def _record(data: Mapping[str, Any], body: bytes | None) -> DeadLetter:
    """The record from its JSON and its body column (NULL on rows written before 0006,
    whose JSON still holds the body)."""
    record = DeadLetter.model_validate(data)
    if body is not None:
        record = record.model_copy(update={"body": body_in(bytes(body), record.body_encoding)})
    return normalized(record)


def _entry(data: Mapping[str, Any]) -> AuditEntry:
    return normalized_entry(AuditEntry.model_validate(data))


def _filter_clauses(filters: DeadLetterFilter) -> builtins.list[ColumnElement[bool]]:
    clauses: builtins.list[ColumnElement[bool]] = []
    if filters.status is not None:
        clauses.append(_dl.status == filters.status.value)
    for name in EQUALITY_FIELDS:
        value = getattr(filters, name)
        if value is not None:
            clauses.append(dead_letters.c[name] == value)
    if filters.since is not None:
        clauses.append(_dl.last_seen_at >= filters.since)
    if filters.until is not None:
        clauses.append(_dl.last_seen_at < filters.until)
    return clauses


class SqlDeadLetters(SqlPart, DeadLetterOperations):
    """The dead-letter primitives over the store's engine."""

    async def _insert_dead_letter(self, record: DeadLetter) -> bool:
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = (
            dialect_insert(dead_letters)
            .values(id=record.id, **_row(record))
            .on_conflict_do_nothing(index_elements=[_dl.id])
            .returning(_dl.id)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                inserted = (await conn.execute(stmt)).first()
        return inserted is not None

    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        query = select(_dl.record, _dl.body).where(_dl.id == dead_letter_id)
        async with self._errors():
            async with self.autocommit.connect() as conn:
                row = (await conn.execute(query)).first()
        return _record(row.record, row.body) if row is not None else None

    async def _swap_dead_letter(self, record: DeadLetter, *, expected_version: int) -> DeadLetter | None:
        stmt = (
            update(dead_letters)
            .where(_dl.id == record.id, _dl.version == expected_version)
            .values(**_row(record))
            .returning(_dl.record, _dl.body)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return _record(row.record, row.body) if row is not None else None

    async def list_dead_letters(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> DeadLetterPage:
        check_page_size(limit)
        clauses = _filter_clauses(filters or DeadLetterFilter())
        if cursor:
            at, last_id = decode_cursor(cursor)
            clauses.append(or_(_dl.last_seen_at < at, and_(_dl.last_seen_at == at, _dl.id < last_id)))
        query = (
            select(_dl.record, _dl.body)
            .where(and_(true(), *clauses))
            .order_by(_dl.last_seen_at.desc(), _dl.id.desc())
            .limit(limit + 1)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                found = (await conn.execute(query)).all()
        items = [_record(row.record, row.body) for row in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            next_cursor = encode_cursor(items[-1].last_seen_at, items[-1].id)
        return DeadLetterPage(items=items, next_cursor=next_cursor)

    async def count_dead_letters(self, filters: DeadLetterFilter | None = None) -> DeadLetterCounts:
        where = and_(true(), *_filter_clauses(filters or DeadLetterFilter()))
        # Grouped by the plain columns: ``unknown`` for a missing type is added in Python
        # (PostgreSQL would not see two bound 'unknown's in SELECT and GROUP BY as one).
        by_type = select(_dl.task_type, func.count()).where(where).group_by(_dl.task_type)
        by_reason = select(_dl.reason, func.count()).where(where).group_by(_dl.reason)
        async with self._errors():
            async with self.autocommit.connect() as conn:
                types = (await conn.execute(by_type)).all()
                reasons = (await conn.execute(by_reason)).all()
        return counts_of([(t, n) for t, n in types], [(r, n) for r, n in reasons])

    async def add_audit(self, entry: AuditEntry) -> None:
        await self.add_audits([entry])

    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        rows: list[dict[str, Any]] = []
        targets: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        for given in entries:
            entry = storable_entry(normalized_entry(given))
            rows.append(
                {
                    "id": entry.id,
                    "at": entry.at,
                    "actor": entry.actor,
                    "action": entry.action,
                    "entry": entry.model_dump(mode="json"),
                }
            )
            targets += [
                {"audit_id": entry.id, "dead_letter_id": i} for i in dict.fromkeys(entry.dead_letter_ids)
            ]
            tasks += [{"audit_id": entry.id, "task_id": i} for i in dict.fromkeys(entry.task_ids)]
        if not rows:
            return
        try:
            async with self._errors():
                async with self.engine.begin() as conn:
                    await conn.execute(insert(dead_letter_audit), rows)
                    if targets:
                        await conn.execute(insert(dead_letter_audit_targets), targets)
                    if tasks:
                        await conn.execute(insert(audit_task_targets), tasks)
        except DuplicateTaskError as exc:
            ids = ", ".join(row["id"] for row in rows[:3])
            raise DuplicateEntryError(f"an audit entry already exists (of {len(rows)}: {ids}…)") from exc

    async def list_audit(
        self,
        filters: AuditFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        dead_letter_id: str | None = None,
    ) -> AuditPage:
        check_page_size(limit)
        wanted = audit_filter(filters, dead_letter_id)
        clauses: builtins.list[ColumnElement[bool]] = []
        if wanted.dead_letter_id is not None:
            naming = select(dead_letter_audit_targets.c.audit_id).where(
                dead_letter_audit_targets.c.dead_letter_id == wanted.dead_letter_id
            )
            clauses.append(_audit.id.in_(naming))
        if wanted.task_id is not None:
            acting = select(audit_task_targets.c.audit_id).where(
                audit_task_targets.c.task_id == wanted.task_id
            )
            clauses.append(_audit.id.in_(acting))
        if wanted.actor is not None:
            clauses.append(_audit.actor == wanted.actor)
        if wanted.action is not None:
            clauses.append(_audit.action == wanted.action)
        if wanted.since is not None:
            clauses.append(_audit.at >= wanted.since)
        if wanted.until is not None:
            clauses.append(_audit.at < wanted.until)
        if cursor:
            at, last_id = decode_cursor(cursor)
            clauses.append(or_(_audit.at < at, and_(_audit.at == at, _audit.id < last_id)))
        query = (
            select(_audit.entry)
            .where(and_(true(), *clauses))
            .order_by(_audit.at.desc(), _audit.id.desc())
            .limit(limit + 1)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                found = (await conn.execute(query)).scalars().all()
        items = [_entry(data) for data in found[:limit]]
        next_cursor = encode_cursor(items[-1].at, items[-1].id) if len(found) > limit else None
        return AuditPage(items=items, next_cursor=next_cursor)

    async def purge_audit(self, *, before: datetime, limit: int = 1000) -> int:
        oldest = select(_audit.id).where(_audit.at < before).order_by(_audit.at, _audit.id).limit(limit)
        async with self._errors():
            async with self.engine.begin() as conn:
                ids = list((await conn.execute(oldest)).scalars())
                if not ids:
                    return 0
                await conn.execute(
                    delete(dead_letter_audit_targets).where(dead_letter_audit_targets.c.audit_id.in_(ids))
                )
                await conn.execute(delete(audit_task_targets).where(audit_task_targets.c.audit_id.in_(ids)))
                await conn.execute(delete(dead_letter_audit).where(_audit.id.in_(ids)))
        return len(ids)
