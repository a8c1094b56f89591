"""Dead-letter records and the audit log on MongoDB (a mixin of ``MongoTaskStore``).

A record is one document (``_id`` is its id) in ``dead_letters``; an audit entry one in
``dead_letter_audit``. Nested values are kept in their JSON form, as on SQL, so every
backend returns the same record; the top-level times are BSON dates (filtered and sorted
on; milliseconds only); the body is BSON binary (any bytes; a text body on documents
written before, read as it is). Changes are a ``find_one_and_update`` on ``_id`` and ``version``
(compare-and-set); an insert of a taken id fails on the unique ``_id`` and says so.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from taskplatform.errors import DuplicateEntryError, StoreError
from taskplatform.models import AuditEntry, DeadLetter
from taskplatform.models.dead_letter import body_in
from taskplatform.store.deadletters import (
    EQUALITY_FIELDS,
    RECORD_TIMES,
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
from taskplatform.store.mongo.part import MongoPart, aware
from taskplatform.store.types import check_page_size, decode_cursor, encode_cursor

DEAD_LETTERS = "dead_letters"
AUDIT = "dead_letter_audit"
#: MongoDB's error code for a unique index violation.
DUPLICATE_KEY = 11000


def _doc(record: DeadLetter) -> dict[str, Any]:
    doc = record.model_dump(mode="json", exclude={"id", "body"})
    doc["_id"] = record.id
    doc["body"] = Binary(record.body_bytes())
    for name in RECORD_TIMES:
        doc[name] = getattr(record, name)
    return doc


def _record(doc: Mapping[str, Any]) -> DeadLetter:
    data = dict(doc)
    data["id"] = data.pop("_id")
    for name in RECORD_TIMES:
        data[name] = aware(data.get(name))
    body = data.pop("body", "")
    record = DeadLetter.model_validate(data)
    if isinstance(body, bytes):  # Binary is bytes; a str body is a document written before
        body = body_in(bytes(body), record.body_encoding)
    return normalized(record.model_copy(update={"body": body}))


def _entry(doc: Mapping[str, Any]) -> AuditEntry:
    data = dict(doc)
    data["id"] = data.pop("_id")
    data["at"] = aware(data.get("at"))
    return normalized_entry(AuditEntry.model_validate(data))


def _filter(filters: DeadLetterFilter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if filters.status is not None:
        query["status"] = filters.status.value
    for name in EQUALITY_FIELDS:
        value = getattr(filters, name)
        if value is not None:
            query[name] = value
    seen: dict[str, Any] = {}
    if filters.since is not None:
        seen["$gte"] = filters.since
    if filters.until is not None:
        seen["$lt"] = filters.until
    if seen:
        query["last_seen_at"] = seen
    return query


def _after(cursor: str, field: str) -> dict[str, Any]:
    """The documents after ``cursor`` in (``field``, ``_id``) descending order."""
    at, last_id = decode_cursor(cursor)
    return {"$or": [{field: {"$lt": at}}, {field: at, "_id": {"$lt": last_id}}]}


class MongoDeadLetters(MongoPart, DeadLetterOperations):
    """The dead-letter primitives over the store's database."""

    async def _ensure_dead_letter_indexes(self) -> None:
        records = self._collection_named(DEAD_LETTERS)
        seen = ("last_seen_at", DESCENDING)
        await records.create_index([seen, ("_id", DESCENDING)], name="ix_seen")
        for name in ("status", "task_type", "reason", "user_id", "error_type"):
            await records.create_index([(name, ASCENDING), seen], name=f"ix_{name}_seen")
        await records.create_index([("task_id", ASCENDING)], name="ix_task")
        audit = self._collection_named(AUDIT)
        await audit.create_index([("at", DESCENDING), ("_id", DESCENDING)], name="ix_at")
        await audit.create_index([("dead_letter_ids", ASCENDING)], name="ix_dead_letter_ids")
        await audit.create_index([("task_ids", ASCENDING)], name="ix_task_ids")
        await audit.create_index([("actor", ASCENDING), ("at", DESCENDING)], name="ix_actor_at")

    async def _insert_dead_letter(self, record: DeadLetter) -> bool:
        async with self._errors():
            try:
                await self._collection_named(DEAD_LETTERS).insert_one(_doc(record))
            except DuplicateKeyError:
                return False
        return True

    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        async with self._errors():
            doc = await self._collection_named(DEAD_LETTERS).find_one({"_id": dead_letter_id})
        return _record(doc) if doc is not None else None

    async def _swap_dead_letter(self, record: DeadLetter, *, expected_version: int) -> DeadLetter | None:
        values = _doc(record)
        del values["_id"]
        async with self._errors():
            doc = await self._collection_named(DEAD_LETTERS).find_one_and_update(
                {"_id": record.id, "version": expected_version},
                {"$set": values},
                return_document=ReturnDocument.AFTER,
            )
        return _record(doc) if doc is not None else None

    async def list_dead_letters(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> DeadLetterPage:
        check_page_size(limit)
        query = _filter(filters or DeadLetterFilter())
        if cursor:
            query.update(_after(cursor, "last_seen_at"))
        async with self._errors():
            found = self._collection_named(DEAD_LETTERS).find(query)
            found = found.sort([("last_seen_at", DESCENDING), ("_id", DESCENDING)])
            docs = await found.limit(limit + 1).to_list(None)
        items = [_record(d) for d in docs[:limit]]
        next_cursor = encode_cursor(items[-1].last_seen_at, items[-1].id) if len(docs) > limit else None
        return DeadLetterPage(items=items, next_cursor=next_cursor)

    async def count_dead_letters(self, filters: DeadLetterFilter | None = None) -> DeadLetterCounts:
        match = _filter(filters or DeadLetterFilter())
        grouped: dict[str, builtins.list[tuple[Any, int]]] = {}
        async with self._errors():
            for name in ("task_type", "reason"):
                pipeline = [{"$match": match}, {"$group": {"_id": f"${name}", "n": {"$sum": 1}}}]
                rows = await (await self._collection_named(DEAD_LETTERS).aggregate(pipeline)).to_list(None)
                grouped[name] = [(r["_id"], int(r["n"])) for r in rows]
        return counts_of(grouped["task_type"], grouped["reason"])

    async def add_audit(self, entry: AuditEntry) -> None:
        await self.add_audits([entry])

    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        docs = []
        for given in entries:
            entry = storable_entry(normalized_entry(given))
            doc = entry.model_dump(mode="json", exclude={"id"})
            doc.update(_id=entry.id, at=entry.at)
            docs.append(doc)
        if not docs:
            return
        async with self._errors():
            try:
                # Unordered: every entry the server accepts is stored, whatever fails beside it.
                await self._collection_named(AUDIT).insert_many(docs, ordered=False)
            except (DuplicateKeyError, BulkWriteError) as exc:
                ids = ", ".join(str(doc["_id"]) for doc in docs[:3])
                errors = (getattr(exc, "details", None) or {}).get("writeErrors") or [{"code": DUPLICATE_KEY}]
                if all(error.get("code") == DUPLICATE_KEY for error in errors):
                    raise DuplicateEntryError(
                        f"an audit entry already exists (of {len(docs)}: {ids}…)"
                    ) from exc
                raise StoreError(f"audit entries not stored (of {len(docs)}: {ids}…): {exc}") from exc

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
        query: dict[str, Any] = {}
        for field, value in (
            ("dead_letter_ids", wanted.dead_letter_id),
            ("task_ids", wanted.task_id),
            ("actor", wanted.actor),
            ("action", wanted.action),
        ):
            if value is not None:
                query[field] = value
        span: dict[str, Any] = {}
        if wanted.since is not None:
            span["$gte"] = wanted.since
        if wanted.until is not None:
            span["$lt"] = wanted.until
        if cursor:
            after = _after(cursor, "at")
            query = {"$and": [query, after]} if span else {**query, **after}
        if span:
            query = {"$and": [query, {"at": span}]}
        async with self._errors():
            found = self._collection_named(AUDIT).find(query).sort([("at", DESCENDING), ("_id", DESCENDING)])
            docs = await found.limit(limit + 1).to_list(None)
        items = [_entry(d) for d in docs[:limit]]
        next_cursor = encode_cursor(items[-1].at, items[-1].id) if len(docs) > limit else None
        return AuditPage(items=items, next_cursor=next_cursor)

    async def purge_audit(self, *, before: datetime, limit: int = 1000) -> int:
        audit = self._collection_named(AUDIT)
        async with self._errors():
            old = audit.find({"at": {"$lt": before}}, {"_id": 1}).sort(
                [("at", ASCENDING), ("_id", ASCENDING)]
            )
            ids = [d["_id"] for d in await old.limit(limit).to_list(None)]
            if not ids:
                return 0
            result = await audit.delete_many({"_id": {"$in": ids}})
        return int(result.deleted_count)
