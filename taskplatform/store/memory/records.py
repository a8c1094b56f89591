"""Dead-letter records and the audit log in memory (a mixin of ``MemoryTaskStore``): the shared
operations of ``DeadLetterOperations`` over a dict of records, compared and swapped by version."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from taskplatform.errors import DuplicateEntryError
from taskplatform.models import AuditEntry, DeadLetter
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
from taskplatform.store.memory.part import MemoryPart, copied
from taskplatform.store.types import check_page_size, decode_cursor, encode_cursor

Item = TypeVar("Item", DeadLetter, AuditEntry)


def _matches(record: DeadLetter, filters: DeadLetterFilter) -> bool:
    if filters.status is not None and record.status != filters.status:
        return False
    if any((v := getattr(filters, n)) is not None and getattr(record, n) != v for n in EQUALITY_FIELDS):
        return False
    if filters.since is not None and record.last_seen_at < filters.since:
        return False
    return filters.until is None or record.last_seen_at < filters.until


def _page(
    items: Iterable[Item], at: Callable[[Item], datetime], limit: int, cursor: str | None
) -> tuple[builtins.list[Item], str | None]:
    """A page of ``items`` newest (``at``, then id) first, after ``cursor``; and the next cursor."""
    check_page_size(limit)
    after = decode_cursor(cursor) if cursor else None
    found = sorted(
        (i for i in items if after is None or (at(i), i.id) < after),
        key=lambda i: (at(i), i.id),
        reverse=True,
    )
    page = [copied(i) for i in found[:limit]]
    return page, (encode_cursor(at(page[-1]), page[-1].id) if len(found) > limit else None)


class MemoryDeadLetters(MemoryPart, DeadLetterOperations):
    """The dead-letter primitives over the store's dicts."""

    async def _insert_dead_letter(self, record: DeadLetter) -> bool:
        records = (await self._reach()).dead_letters
        if record.id in records:
            return False
        records[record.id] = copied(record)
        return True

    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        record = (await self._reach()).dead_letters.get(dead_letter_id)
        return normalized(copied(record)) if record is not None else None

    async def _swap_dead_letter(self, record: DeadLetter, *, expected_version: int) -> DeadLetter | None:
        records = (await self._reach()).dead_letters
        current = records.get(record.id)
        if current is None or current.version != expected_version:
            return None
        records[record.id] = copied(record)
        return normalized(copied(record))

    async def list_dead_letters(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> DeadLetterPage:
        wanted = filters or DeadLetterFilter()
        records = (await self._reach()).dead_letters.values()
        items, next_cursor = _page(
            (r for r in records if _matches(r, wanted)), lambda r: r.last_seen_at, limit, cursor
        )
        return DeadLetterPage(items=[normalized(r) for r in items], next_cursor=next_cursor)

    async def count_dead_letters(self, filters: DeadLetterFilter | None = None) -> DeadLetterCounts:
        wanted = filters or DeadLetterFilter()
        found = [r for r in (await self._reach()).dead_letters.values() if _matches(r, wanted)]
        return counts_of([(r.task_type, 1) for r in found], [(r.reason, 1) for r in found])

    async def add_audit(self, entry: AuditEntry) -> None:
        await self.add_audits([entry])

    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        stored = [storable_entry(normalized_entry(entry)) for entry in entries]
        audit = (await self._reach()).audit
        seen: set[str] = set()
        for entry in stored:
            if entry.id in audit or entry.id in seen:
                raise DuplicateEntryError(f"audit entry {entry.id} already exists")
            seen.add(entry.id)
        for entry in stored:
            audit[entry.id] = copied(entry)

    async def list_audit(
        self,
        filters: AuditFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        dead_letter_id: str | None = None,
    ) -> AuditPage:
        wanted = audit_filter(filters, dead_letter_id)
        entries = [e for e in (await self._reach()).audit.values() if wanted.matches(e)]
        items, next_cursor = _page(entries, lambda e: e.at, limit, cursor)
        return AuditPage(items=items, next_cursor=next_cursor)

    async def purge_audit(self, *, before: datetime, limit: int = 1000) -> int:
        audit = (await self._reach()).audit
        old = sorted((e for e in audit.values() if e.at < before), key=lambda e: (e.at, e.id))[:limit]
        for entry in old:
            del audit[entry.id]
        return len(old)
