"""MongoDB task store on PyMongo's async API (``AsyncMongoClient``)."""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WaitQueueTimeoutError

from taskplatform.errors import DuplicateTaskError, StoreError
from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus, utcnow
from taskplatform.models.task import idempotency_scope
from taskplatform.store import DEFAULT_MAX_CONNECTIONS, POOL_TIMEOUT_SECONDS, check_max_connections
from taskplatform.store.base import (
    BaseTaskStore,
    Guard,
    TaskFilter,
    TaskPage,
    check_page_size,
    decode_cursor,
    encode_cursor,
)
from taskplatform.store.mongo.deadletters import MongoDeadLetters
from taskplatform.store.mongo.history import MongoAttemptHistory
from taskplatform.store.mongo.outbox import MongoOutbox
from taskplatform.store.mongo.part import TASK_PROJECTION, aware
from taskplatform.store.mongo.ratelimits import MongoRateLimits
from taskplatform.store.mongo.retention import MongoRetention
from taskplatform.store.mongo.rollup import MongoRollup
from taskplatform.store.mongo.workers import MongoWorkers
from taskplatform.store.primitives import ClockSample, read_clock, stored_value
from taskplatform.store.types import EQUALITY_FILTERS, Backlog

log = logging.getLogger(__name__)

COLLECTION = "tasks"
DEFAULT_DATABASE = "taskplatform"


#: Counters added after the first documents were written: a document lacking one is at 0.
_LATE_COUNTERS = frozenset({"replays"})


def _guard_value(field: str, value: Any) -> Any:
    # A document written before a boolean field existed lacks it: it counts as false.
    if value is False:
        return {"$ne": True}
    if value == 0 and field in _LATE_COUNTERS:
        return {"$in": [0, None]}  # None matches a missing field
    return stored_value(value)


#: MongoDB's duplicate-key error codes.
_DUPLICATE_KEY = frozenset({11000, 11001})


class MongoTaskStore(
    MongoDeadLetters,
    MongoRateLimits,
    MongoWorkers,
    MongoAttemptHistory,
    MongoRetention,
    MongoRollup,
    MongoOutbox,
    BaseTaskStore,
):
    """Tasks as documents in one collection (``_id`` is the task id); dead letters and the
    audit log in two more (``MongoDeadLetters``); rate limits in another
    (``MongoRateLimits``); the worker registry in another (``MongoWorkers``); each task's
    attempt history in its own document (``MongoAttemptHistory``); finished tasks
    expire by a TTL index (``MongoRetention``); the parent roll-up (``MongoRollup``) and the
    outbox (``MongoOutbox``) live in the task documents.

    ``database`` may be injected (any object with PyMongo's async database interface);
    otherwise an ``AsyncMongoClient`` is created from ``url``, whose path names the
    database (``taskplatform`` when it has none). ``retention_seconds``: how long finished
    tasks are kept (None: for ever). ``max_connections``: the client's ``maxPoolSize`` (it wins
    over one in the URL): connections per server for operations, beyond which calls wait for a
    free one up to ``POOL_TIMEOUT_SECONDS``; PyMongo's monitoring adds one or two per server.
    """

    url_scheme = "mongodb"

    def __init__(
        self,
        url: str,
        *,
        database: Any = None,
        server_selection_timeout_ms: int = 5000,
        retention_seconds: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.url = url
        self.retention_seconds = retention_seconds
        self.max_connections = check_max_connections(max_connections)
        self._timeout_ms = server_selection_timeout_ms
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: Any = database
        self._injected = database is not None

    @property
    def database(self) -> Any:
        if self._db is None:
            raise StoreError("store is not open; call open() first")
        return self._db

    @property
    def collection(self) -> Any:
        return self.database[COLLECTION]

    def _collection_named(self, name: str) -> Any:
        if self._db is None:
            raise StoreError("store is not open; call open() first")
        return self._db[name]

    async def open(self) -> None:
        if self._db is None:
            self._client = AsyncMongoClient(
                self.url,
                tz_aware=True,
                serverSelectionTimeoutMS=self._timeout_ms,
                uuidRepresentation="standard",
                maxPoolSize=self.max_connections,
                waitQueueTimeoutMS=int(POOL_TIMEOUT_SECONDS * 1000),
            )
            self._db = self._client.get_default_database(default=DEFAULT_DATABASE)
        async with self._errors():
            await self.ping()
            await self._ensure_indexes()
        await self.sync_clock()

    async def _ensure_indexes(self) -> None:
        coll = self.collection
        await coll.create_index([("created_at", DESCENDING), ("_id", DESCENDING)], name="ix_created")
        await coll.create_index("idempotency_scope", name="ux_idempotency", unique=True, sparse=True)
        await coll.create_index([("status", ASCENDING), ("created_at", DESCENDING)], name="ix_status_created")
        await coll.create_index(
            [("task_type", ASCENDING), ("created_at", DESCENDING)], name="ix_type_created"
        )
        await coll.create_index([("user_id", ASCENDING), ("created_at", DESCENDING)], name="ix_user_created")
        await coll.create_index([("parent_task_id", ASCENDING)], name="ix_parent")
        await coll.create_index([("tags", ASCENDING)], name="ix_tags")
        await coll.create_index(
            [("target.mode", ASCENDING), ("status", ASCENDING)], name="ix_target_mode", sparse=True
        )
        await coll.create_index(
            [("created_at", ASCENDING)],
            name="ix_outbox_pending",
            partialFilterExpression={"outbox.status": OutboxStatus.PENDING.value},
        )
        await self._ensure_dead_letter_indexes()
        await self._ensure_worker_indexes()
        await self._ensure_retention_index()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        if not self._injected:
            self._db = None

    async def ping(self) -> None:
        if self._db is None:
            raise StoreError("store is not open; call open() first")
        async with self._errors():
            await self._db.command("ping")

    async def _clock_samples(self) -> builtins.list[ClockSample]:
        async def server_time() -> datetime:
            reply = await self.database.command("hello")
            value: datetime = reply["localTime"]  # the server's clock, in milliseconds
            return value

        async with self._errors():
            return await read_clock(server_time)

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except DuplicateKeyError as exc:
            raise DuplicateTaskError(f"task already exists: {exc}") from exc
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if any(error.get("code") in _DUPLICATE_KEY for error in errors):
                raise DuplicateTaskError(f"task already exists: {exc}") from exc
            raise StoreError(f"store operation failed: {exc}") from exc  # e.g. a write concern
        except WaitQueueTimeoutError as exc:
            raise StoreError(
                f"no store connection free within {POOL_TIMEOUT_SECONDS:g} s: all {self.max_connections} "
                "are busy (TASKPLATFORM_STORE_MAX_CONNECTIONS, the client's maxPoolSize per server); "
                f"raise it, or lower the load ({exc})"
            ) from exc
        except PyMongoError as exc:
            raise StoreError(f"store operation failed: {exc}") from exc

    # ------------------------------------------------------------ primitives
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        if not tasks:
            return
        docs = [self._to_doc(t) for t in tasks]
        try:
            async with self._errors():
                await self.collection.insert_many(docs, ordered=True)
        except (DuplicateTaskError, StoreError) as exc:
            # An ordered insert keeps the documents before the one that failed; the port says
            # nothing is inserted, so take them back (ids are this batch's own, fresh).
            failed = exc.__cause__
            if isinstance(failed, BulkWriteError):
                kept = [doc["_id"] for doc in docs[: int(failed.details.get("nInserted", 0))]]
                if kept:
                    await self._take_back(kept, exc)
            raise

    async def _take_back(self, ids: builtins.list[str], failure: Exception) -> None:
        """Delete the documents a failed ordered insert kept. If that fails too (the outage
        goes on), the batch's own error still stands: a caller that inserts the tasks again one
        by one finds those documents as its own (fresh ids), and a caller that gives up leaves
        them for the relay, queued as submitted; the log names them."""
        try:
            async with self._errors():
                await self.collection.delete_many({"_id": {"$in": ids}})
        except StoreError as exc:
            log.error(
                "a failed batch insert (%s) kept %d task(s) and taking them back failed too (%s): "
                "they stay stored and queued: %s",
                failure,
                len(ids),
                exc,
                ", ".join(ids),
            )

    async def get(self, task_id: str) -> BackgroundTask | None:
        async with self._errors():
            doc = await self.collection.find_one({"_id": task_id}, TASK_PROJECTION)
        return self._to_task(doc) if doc is not None else None

    async def get_visible(self, task_id: str, *, user_id: str) -> BackgroundTask | None:
        async with self._errors():
            doc = await self.collection.find_one({"_id": task_id, "user_id": user_id}, TASK_PROJECTION)
        return self._to_task(doc) if doc is not None else None

    @staticmethod
    def _filter(filters: TaskFilter) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if filters.status is not None:
            query["status"] = filters.status.value
        for name in EQUALITY_FILTERS:
            value = getattr(filters, name)
            if value is not None:
                query[name] = value
        if filters.tags:
            query["tags"] = {"$all": list(filters.tags)}
        if filters.node is not None:  # under $and: a cursor adds an $or of its own
            query["$and"] = [{"$or": [{"target.node": filters.node}, {"execution_node_id": filters.node}]}]
        return query

    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        check_page_size(limit)
        query = self._filter(filters or TaskFilter())
        if cursor:
            at, last_id = decode_cursor(cursor)
            query["$or"] = [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": last_id}}]
        async with self._errors():
            found = self.collection.find(query, TASK_PROJECTION).sort(
                [("created_at", DESCENDING), ("_id", DESCENDING)]
            )
            docs = await found.limit(limit + 1).to_list(None)
        items = [self._to_task(d) for d in docs[:limit]]
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(docs) > limit else None
        return TaskPage(items=items, next_cursor=next_cursor)

    async def backlog(self) -> Backlog:
        async with self._errors():
            pending = await self.collection.count_documents({"outbox.status": OutboxStatus.PENDING.value})
            first = await self.collection.find_one(
                {"status": TaskStatus.QUEUED.value}, {"created_at": 1}, sort=[("created_at", ASCENDING)]
            )
            first_pending = await self.collection.find_one(
                {"outbox.status": OutboxStatus.PENDING.value},
                {"created_at": 1},
                sort=[("created_at", ASCENDING)],
            )
        return Backlog(
            outbox_pending=int(pending),
            oldest_queued_at=aware(first["created_at"]) if first is not None else None,
            oldest_pending_at=aware(first_pending["created_at"]) if first_pending is not None else None,
        )

    async def count_by_status(self) -> dict[TaskStatus, int]:
        async with self._errors():
            cursor = await self.collection.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
            rows = await cursor.to_list(None)
        return {TaskStatus(r["_id"]): int(r["n"]) for r in rows}

    @staticmethod
    def _guard_filter(task_id: str, guard: Guard) -> dict[str, Any]:
        equals = {k: _guard_value(k, v) for k, v in guard.equals.items()}
        branches: list[dict[str, Any]] = [{"status": {"$in": [s.value for s in guard.statuses]}, **equals}]
        if guard.takeover_before is not None:
            branches.append(
                {"status": TaskStatus.RUNNING.value, "lease_until": {"$lt": guard.takeover_before}, **equals}
            )
        return {"_id": task_id, "$or": branches}

    async def _guarded_update(
        self, task_id: str, guard: Guard, changes: Mapping[str, Any]
    ) -> BackgroundTask | None:
        values = {k: stored_value(v) for k, v in changes.items()}
        values.setdefault("updated_at", utcnow())
        async with self._errors():
            doc = await self.collection.find_one_and_update(
                self._guard_filter(task_id, guard),
                {"$set": values, "$inc": {"version": 1}},
                projection=TASK_PROJECTION,
                return_document=ReturnDocument.AFTER,
            )
        return self._to_task(doc) if doc is not None else None

    async def list_aimed_waiting(
        self, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> builtins.list[BackgroundTask]:
        query: dict[str, Any] = {
            "target.mode": "any",  # aimed at a node or at any worker with labels: a queue of its own
            "status": {"$in": [TaskStatus.QUEUED.value, TaskStatus.RETRYING.value]},
        }
        if after is not None:
            at, last_id = after
            query["$or"] = [{"created_at": {"$gt": at}}, {"created_at": at, "_id": {"$gt": last_id}}]
        async with self._errors():
            order = [("created_at", ASCENDING), ("_id", ASCENDING)]
            found = self.collection.find(query, TASK_PROJECTION).sort(order).limit(limit)
            docs = await found.to_list(None)
        return [self._to_task(d) for d in docs]

    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]:
        query = {"status": TaskStatus.RUNNING.value, "lease_until": {"$ne": None, "$lt": before}}
        async with self._errors():
            docs = (
                await self.collection.find(query, TASK_PROJECTION)
                .sort([("lease_until", ASCENDING)])
                .limit(limit)
                .to_list(None)
            )
        return [self._to_task(d) for d in docs]

    async def find_by_idempotency_key(self, user_id: str | None, key: str) -> BackgroundTask | None:
        async with self._errors():
            doc = await self.collection.find_one(
                {"idempotency_scope": idempotency_scope(user_id, key)}, TASK_PROJECTION
            )
        return self._to_task(doc) if doc is not None else None

    async def list_awaiting_parents(
        self, *, updated_before: datetime, limit: int
    ) -> builtins.list[BackgroundTask]:
        query = {
            "status": TaskStatus.RUNNING.value,
            "awaiting_children": True,
            "updated_at": {"$lt": updated_before},
        }
        async with self._errors():
            docs = (
                await self.collection.find(query, TASK_PROJECTION)
                .sort([("updated_at", ASCENDING)])
                .limit(limit)
                .to_list(None)
            )
        return [self._to_task(d) for d in docs]
