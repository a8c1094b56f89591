"""In-memory task store: task documents in a dict, every operation the shared one of
``BaseTaskStore`` over the primitives below, as on SQL and MongoDB.

For unit tests (users' and the platform's). It keeps nothing past the process.
``create_store("memory://")`` gives a store with data of its own; ``create_store("memory://name")``
gives one sharing the process-wide dataset ``name`` with every other store of that name (an API
runtime and a worker runtime in one test see the same tasks, as with one database; drop it
with ``forget_dataset(name)``). Use a named dataset from one event loop only. Operations yield
to the event loop once and then run without awaiting, so each is atomic and concurrent callers
interleave between them as they would with a server. ``available = False`` simulates an outage
of one store object (others sharing its dataset still answer).

A write the task model refuses (a value of the wrong type or out of range) raises
``StoreRefused`` and changes nothing. Times keep microseconds, as SQLite and PostgreSQL do
(MongoDB keeps milliseconds: a cursor or tie test passing here may still differ there).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from taskplatform.errors import DuplicateTaskError, StoreRefused
from taskplatform.models import BackgroundTask, OutboxStatus, SubTaskStatusSummary, TaskStatus, utcnow
from taskplatform.models.task import idempotency_scope
from taskplatform.store.base import BaseTaskStore, outbox_published_changes
from taskplatform.store.memory.part import MemoryPart, copied, dataset_of
from taskplatform.store.memory.records import MemoryDeadLetters
from taskplatform.store.memory.upkeep import MemoryUpkeep
from taskplatform.store.memory.workers import MemoryWorkers
from taskplatform.store.primitives import ClockSample, failed_lease_until, read_clock
from taskplatform.store.rollup import check_child_id, rollup_delta
from taskplatform.store.types import (
    EQUALITY_FILTERS,
    Backlog,
    Guard,
    ParentState,
    TaskFilter,
    TaskPage,
    check_page_size,
    decode_cursor,
    encode_cursor,
)

Document = dict[str, Any]


def _field(doc: Document, name: str) -> Any:
    """A document field; ``outbox.<field>`` reads the outbox's."""
    if name.startswith("outbox."):
        return doc["outbox"][name.removeprefix("outbox.")]
    return doc.get(name)


def _holds(doc: Document, guard: Guard) -> bool:
    if any(_field(doc, name) != value for name, value in guard.equals.items()):
        return False
    if doc["status"] in guard.statuses:
        return True
    lease = doc["lease_until"]
    return (
        guard.takeover_before is not None
        and doc["status"] == TaskStatus.RUNNING
        and lease is not None
        and lease < guard.takeover_before
    )


def _matches(doc: Document, filters: TaskFilter) -> bool:
    if filters.status is not None and doc["status"] != filters.status:
        return False
    if any((v := getattr(filters, n)) is not None and doc.get(n) != v for n in EQUALITY_FILTERS):
        return False
    if filters.node is not None and filters.node not in (
        (doc.get("target") or {}).get("node"),
        doc.get("execution_node_id"),
    ):
        return False
    return all(tag in doc["tags"] for tag in filters.tags)


def _document(task: BackgroundTask) -> Document:
    return task.model_dump(mode="python")


class MemoryTaskStore(MemoryDeadLetters, MemoryUpkeep, MemoryWorkers, MemoryPart, BaseTaskStore):
    """Tasks as documents in a dict keyed by id; dead letters and the audit log:
    ``MemoryDeadLetters``; rate limits and retention: ``MemoryUpkeep``; the worker registry:
    ``MemoryWorkers``."""

    url_scheme = "memory"

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self._data = dataset_of(url)  # a named URL's shared dataset, or data of its own
        self.url = url

    async def open(self) -> None:
        self._open = True
        await self.sync_clock()

    async def close(self) -> None:
        # The data stays: opening the store again finds it, as a file or a server would keep it.
        self._open = False

    async def ping(self) -> None:
        await self._reach()

    async def _clock_samples(self) -> builtins.list[ClockSample]:
        await self._reach()

        async def system_clock() -> datetime:
            # The machine's clock, read as a server's would be: a process whose platform clock is
            # off (faked in tests) measures its offset to it, as it would to a real store.
            return datetime.now(UTC)

        return await read_clock(system_clock)

    @staticmethod
    def _to_task(doc: Document) -> BackgroundTask:
        return BackgroundTask.model_validate(copied(doc))

    def _select(
        self, docs: Iterable[Document], key: Callable[[Document], Any], limit: int
    ) -> builtins.list[BackgroundTask]:
        return [self._to_task(d) for d in sorted(docs, key=key)[:limit]]

    # ------------------------------------------------------------ reads and inserts
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        data = await self._reach()
        ids = [t.id for t in tasks]
        taken = {idempotency_scope(d["user_id"], d["idempotency_key"]) for d in data.tasks.values()}
        scopes = [s for t in tasks if (s := idempotency_scope(t.user_id, t.idempotency_key)) is not None]
        if len(set(ids)) != len(ids) or any(i in data.tasks for i in ids):
            raise DuplicateTaskError(f"task already exists: one of {ids}")
        if len(set(scopes)) != len(scopes) or any(s in taken for s in scopes):
            raise DuplicateTaskError("task already exists: its idempotency key is taken")
        for task in tasks:
            data.tasks[task.id] = _document(task)

    async def get(self, task_id: str) -> BackgroundTask | None:
        doc = (await self._reach()).tasks.get(task_id)
        return self._to_task(doc) if doc is not None else None

    async def get_visible(self, task_id: str, *, user_id: str) -> BackgroundTask | None:
        doc = (await self._reach()).tasks.get(task_id)
        return self._to_task(doc) if doc is not None and doc["user_id"] == user_id else None

    async def find_by_idempotency_key(self, user_id: str | None, key: str) -> BackgroundTask | None:
        scope = idempotency_scope(user_id, key)
        for doc in (await self._reach()).tasks.values():
            if idempotency_scope(doc["user_id"], doc["idempotency_key"]) == scope:
                return self._to_task(doc)
        return None

    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        check_page_size(limit)
        after = decode_cursor(cursor) if cursor else None
        data = await self._reach()
        found = [d for d in data.tasks.values() if _matches(d, filters or TaskFilter())]
        if after is not None:
            found = [d for d in found if (d["created_at"], d["id"]) < after]
        found.sort(key=lambda d: (d["created_at"], d["id"]), reverse=True)
        items = [self._to_task(d) for d in found[:limit]]
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(found) > limit else None
        return TaskPage(items=items, next_cursor=next_cursor)

    async def backlog(self) -> Backlog:
        docs = (await self._reach()).tasks.values()
        pending = [d["created_at"] for d in docs if d["outbox"]["status"] == OutboxStatus.PENDING]
        queued = [d["created_at"] for d in docs if d["status"] == TaskStatus.QUEUED]
        return Backlog(
            outbox_pending=len(pending),
            oldest_queued_at=min(queued, default=None),
            oldest_pending_at=min(pending, default=None),
        )

    async def count_by_status(self) -> dict[TaskStatus, int]:
        counts: dict[TaskStatus, int] = {}
        for doc in (await self._reach()).tasks.values():
            counts[doc["status"]] = counts.get(doc["status"], 0) + 1
        return counts

    async def list_aimed_waiting(
        self, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> builtins.list[BackgroundTask]:
        docs = (await self._reach()).tasks.values()
        waiting = (d for d in docs if d["status"] in (TaskStatus.QUEUED, TaskStatus.RETRYING))
        aimed = (d for d in waiting if (d.get("target") or {}).get("mode") == "any")
        later = (d for d in aimed if after is None or (d["created_at"], d["id"]) > after)
        return self._select(later, lambda d: (d["created_at"], d["id"]), limit)

    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]:
        docs = (await self._reach()).tasks.values()
        running = (d for d in docs if d["status"] == TaskStatus.RUNNING and d["lease_until"] is not None)
        lapsed = (d for d in running if d["lease_until"] < before)
        return self._select(lapsed, lambda d: d["lease_until"], limit)

    async def list_awaiting_parents(
        self, *, updated_before: datetime, limit: int
    ) -> builtins.list[BackgroundTask]:
        docs = (await self._reach()).tasks.values()
        waiting = (d for d in docs if d["status"] == TaskStatus.RUNNING and d["awaiting_children"])
        stale = (d for d in waiting if d["updated_at"] < updated_before)
        return self._select(stale, lambda d: d["updated_at"], limit)

    # ------------------------------------------------------------ writes
    @staticmethod
    def _changed(doc: Document, changes: Mapping[str, Any]) -> Document:
        """``doc`` with ``changes`` (``outbox.<field>`` keys for the outbox), validated as a task
        (so values are stored as a read returns them) and its version bumped. A value the task
        model refuses: StoreRefused (a store fault, as a server refusing it would raise)."""
        after = copied(doc)
        for name, value in copied(dict(changes)).items():
            if name.startswith("outbox."):
                after["outbox"][name.removeprefix("outbox.")] = value
            else:
                after[name] = value
        after["version"] = doc["version"] + 1
        try:
            return _document(BackgroundTask.model_validate(after))
        except ValidationError as exc:
            raise StoreRefused(f"store refused the write of task {doc['id']!r}: {exc}") from exc

    async def _guarded_update(
        self, task_id: str, guard: Guard, changes: Mapping[str, Any]
    ) -> BackgroundTask | None:
        data = await self._reach()
        doc = data.tasks.get(task_id)
        if doc is None or not _holds(doc, guard):
            return None
        data.tasks[task_id] = self._changed(doc, {"updated_at": utcnow(), **changes})
        return self._to_task(data.tasks[task_id])

    async def apply_rollup(
        self, parent_id: str, child_id: str, status: TaskStatus, child_version: int
    ) -> ParentState | None:
        check_child_id(child_id)
        data = await self._reach()
        doc = data.tasks.get(parent_id)
        if doc is None:
            return None
        ledger = data.ledgers.setdefault(parent_id, {})
        if child_id not in ledger:
            for other, entries in data.ledgers.items():
                if other != parent_id and child_id in entries:
                    raise ValueError(f"task {child_id} is a child of {other}, not of {parent_id}")
        delta = rollup_delta(ledger.get(child_id), status, child_version)
        if delta is not None:
            ledger[child_id] = delta.entry
            if delta.increments:
                counts = doc["sub_task_status_summary"] or SubTaskStatusSummary().model_dump()
                counts = {**counts, **{k: counts[k] + n for k, n in delta.increments.items()}}
                changes = {"sub_task_status_summary": counts, "updated_at": utcnow()}
                doc = data.tasks[parent_id] = self._changed(doc, changes)
        return ParentState.of(self._to_task(doc))

    # ------------------------------------------------------------ outbox
    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]:
        now = self.now()  # outbox leases are the store's time, like task leases
        data = await self._reach()
        claimable = sorted(
            (
                d
                for d in data.tasks.values()
                if d["outbox"]["status"] == OutboxStatus.PENDING
                and d["created_at"] < created_before
                and (d["outbox"]["lease_until"] is None or d["outbox"]["lease_until"] < now)
            ),
            key=lambda d: (d["created_at"], d["id"]),
        )[:limit]
        claimed: builtins.list[BackgroundTask] = []
        for doc in claimable:
            lease = {"outbox.lease_until": lease_until, "outbox.lease_owner": owner}
            data.tasks[doc["id"]] = self._changed(doc, lease)
            claimed.append(self._to_task(data.tasks[doc["id"]]))
        return claimed

    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int:
        data = await self._reach()
        marked = 0
        for task_id in dict.fromkeys(task_ids):
            doc = data.tasks.get(task_id)
            if doc is None or doc["outbox"]["status"] != OutboxStatus.PENDING:
                continue
            if doc["outbox"]["lease_owner"] != owner:
                continue
            data.tasks[task_id] = self._changed(doc, outbox_published_changes(utcnow()))
            marked += 1
        return marked

    async def record_publish_failure(self, task_id: str, error: str, *, retry_in: float = 0.0) -> None:
        data = await self._reach()
        doc = data.tasks.get(task_id)
        if doc is None or doc["outbox"]["status"] != OutboxStatus.PENDING:
            return
        changes = {
            "outbox.attempts": doc["outbox"]["attempts"] + 1,
            "outbox.last_error": error[:2000],
            # free for a relay pass after retry_in; the owner stays (see the port)
            "outbox.lease_until": failed_lease_until(self.now(), retry_in),
        }
        data.tasks[task_id] = self._changed(doc, changes)
