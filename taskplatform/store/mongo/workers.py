"""The worker registry on MongoDB (a mixin of ``MongoTaskStore``): one document per worker in
``workers`` (``_id`` is the node id).

A beat is one ``find_one_and_update`` (upsert) returning the document as it was before: its
state is what ``beat_worker`` returns (none: new). The sweep finds the candidates, then moves
each with a ``find_one_and_update`` on the same condition: of sweeps racing, one moves each
document, and a beat that landed first has moved ``expires_at`` out of reach.

Labels are kept as a sub-document (``labels.role`` for an operator's query) and, for the
store's own matching, as ``label_pairs`` (``["role=db", …]``, indexed): a filter is ``$all`` of
exact strings, so ``_`` and ``%`` are themselves and a key holding a dot (``topology.zone``,
which a ``labels.<key>`` path would read as nesting) matches too. Times are BSON dates
(milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.store.mongo.part import MongoPart, aware
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

WORKERS = "workers"
_TIMES = ("started_at", "last_seen_at", "expires_at", "state_changed_at")


def _fields(record: WorkerRecord) -> dict[str, Any]:
    """The document of ``record`` but its ``_id``."""
    doc = record.model_dump(mode="python", exclude={"node_id"})
    doc["state"] = record.state.value
    doc["label_pairs"] = label_pairs(record.labels)
    return doc


def _record(doc: Mapping[str, Any]) -> WorkerRecord:
    data = dict(doc)
    data["node_id"] = data.pop("_id")
    data.pop("label_pairs", None)
    for name in _TIMES:
        data[name] = aware(data.get(name))
    return WorkerRecord.model_validate(data)


def _expired(now: datetime) -> dict[str, Any]:
    return {"state": {"$in": PRESENT_STATES}, "expires_at": {"$lte": now}}


class MongoWorkers(MongoPart):
    """The worker registry over the store's database (``taskplatform.store.workers``)."""

    async def _ensure_worker_indexes(self) -> None:
        records = self._collection_named(WORKERS)
        await records.create_index([("state", ASCENDING), ("expires_at", ASCENDING)], name="ix_state_expires")
        await records.create_index([("last_seen_at", ASCENDING)], name="ix_last_seen")
        await records.create_index([("label_pairs", ASCENDING)], name="ix_label_pairs")

    async def beat_worker(self, record: WorkerRecord) -> WorkerState | None:
        """Write ``record`` whole, by node id; the state the stored record had before (None: new)."""
        async with self._errors():
            before = await self._collection_named(WORKERS).find_one_and_update(
                {"_id": record.node_id},
                {"$set": _fields(record)},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        return WorkerState(before["state"]) if before is not None else None

    async def get_worker(self, node_id: str) -> WorkerRecord | None:
        """The record, or None."""
        async with self._errors():
            doc = await self._collection_named(WORKERS).find_one({"_id": node_id})
        return _record(doc) if doc is not None else None

    async def list_workers(
        self, filters: WorkerFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> WorkerPage:
        """A page of records by node id, ascending."""
        check_page_size(limit)
        query = self._worker_query(filters or WorkerFilter())
        if cursor:
            query["_id"] = {"$gt": decode_worker_cursor(cursor)}
        async with self._errors():
            found = (
                await self._collection_named(WORKERS)
                .find(query)
                .sort([("_id", ASCENDING)])
                .limit(limit + 1)
                .to_list(None)
            )
        items = [_record(doc) for doc in found[:limit]]
        next_cursor = encode_worker_cursor(items[-1].node_id) if len(found) > limit else None
        return WorkerPage(items=items, next_cursor=next_cursor)

    def _worker_query(self, filters: WorkerFilter) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = []
        if filters.online is not None:
            now = self.now()
            present = {"state": {"$in": PRESENT_STATES}, "expires_at": {"$gt": now}}
            absent = {"$or": [{"state": {"$nin": PRESENT_STATES}}, {"expires_at": {"$lte": now}}]}
            clauses.append(present if filters.online else absent)
        if filters.state is not None:
            clauses.append({"state": filters.state.value})
        if filters.host is not None:
            clauses.append({"host": filters.host})
        if filters.labels:
            clauses.append({"label_pairs": {"$all": label_pairs(filters.labels)}})
        return {"$and": clauses} if clauses else {}

    async def sweep_offline_workers(self, *, now: datetime, limit: int = 100) -> list[WorkerRecord]:
        """Move present records expired at ``now`` to ``offline``; the records moved (by this call)."""
        check_batch(limit)
        records = self._collection_named(WORKERS)
        async with self._errors():
            candidates = (
                await records.find(_expired(now), {"_id": 1})
                .sort([("expires_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit)
                .to_list(None)
            )
            moved: list[WorkerRecord] = []
            for candidate in candidates:
                # The condition again: a beat or another sweep in between leaves the document alone.
                doc = await records.find_one_and_update(
                    {"_id": candidate["_id"], **_expired(now)},
                    {"$set": {"state": WorkerState.OFFLINE.value, "state_changed_at": now}},
                    return_document=ReturnDocument.AFTER,
                )
                if doc is not None:
                    moved.append(_record(doc))
        return sorted(moved, key=lambda r: r.node_id)

    async def prune_workers(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete ``stopped``/``offline`` records last seen before ``before``; how many."""
        check_batch(limit)
        records = self._collection_named(WORKERS)
        gone = {"state": {"$in": GONE_STATES}, "last_seen_at": {"$lt": before}}
        async with self._errors():
            found = (
                await records.find(gone, {"_id": 1})
                .sort([("last_seen_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit)
                .to_list(None)
            )
            if not found:
                return 0
            # The condition again: a worker that beat in between keeps its record.
            result = await records.delete_many({"_id": {"$in": [doc["_id"] for doc in found]}, **gone})
        return int(result.deleted_count)
