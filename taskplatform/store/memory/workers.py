"""The worker registry in memory (a mixin of ``MemoryTaskStore``): records by node id.

Each operation reaches the data once and then runs without awaiting, so a beat, a sweep and a
prune are each atomic: of sweeps racing, the first moves a record and the next finds it offline.
"""

from __future__ import annotations

from datetime import datetime

from taskplatform.models.worker import PRESENT, WorkerRecord, WorkerState
from taskplatform.store.memory.part import MemoryPart, copied
from taskplatform.store.ports import StoreClock
from taskplatform.store.types import check_page_size
from taskplatform.store.workers import (
    GONE_STATES,
    WorkerFilter,
    WorkerPage,
    check_batch,
    decode_worker_cursor,
    encode_worker_cursor,
)


def _matches(record: WorkerRecord, filters: WorkerFilter, now: datetime) -> bool:
    if filters.online is not None and record.online_at(now) != filters.online:
        return False
    if filters.state is not None and record.state != filters.state:
        return False
    if filters.host is not None and record.host != filters.host:
        return False
    return all(record.labels.get(key) == value for key, value in filters.labels.items())


def _expired(record: WorkerRecord, now: datetime) -> bool:
    return record.state in PRESENT and record.expires_at <= now


class MemoryWorkers(MemoryPart, StoreClock):
    """The worker registry over the store's dict (``taskplatform.store.workers``)."""

    async def beat_worker(self, record: WorkerRecord) -> WorkerState | None:
        """Write ``record`` whole, by node id; the state the stored record had before (None: new)."""
        workers = (await self._reach()).workers
        before = workers.get(record.node_id)
        workers[record.node_id] = copied(record)
        return before.state if before is not None else None

    async def get_worker(self, node_id: str) -> WorkerRecord | None:
        """The record, or None."""
        record = (await self._reach()).workers.get(node_id)
        return copied(record) if record is not None else None

    async def list_workers(
        self, filters: WorkerFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> WorkerPage:
        """A page of records by node id, ascending."""
        check_page_size(limit)
        wanted = filters or WorkerFilter()
        after = decode_worker_cursor(cursor) if cursor else None
        workers = (await self._reach()).workers
        now = self.now()
        later = (r for r in workers.values() if after is None or r.node_id > after)
        found = sorted((r for r in later if _matches(r, wanted, now)), key=lambda r: r.node_id)
        items = [copied(r) for r in found[:limit]]
        next_cursor = encode_worker_cursor(items[-1].node_id) if len(found) > limit else None
        return WorkerPage(items=items, next_cursor=next_cursor)

    async def sweep_offline_workers(self, *, now: datetime, limit: int = 100) -> list[WorkerRecord]:
        """Move present records expired at ``now`` to ``offline``; the records moved (by this call)."""
        check_batch(limit)
        workers = (await self._reach()).workers
        expired = sorted(
            (r for r in workers.values() if _expired(r, now)), key=lambda r: (r.expires_at, r.node_id)
        )
        moved = []
        for record in expired[:limit]:
            offline = record.model_copy(update={"state": WorkerState.OFFLINE, "state_changed_at": now})
            workers[record.node_id] = offline
            moved.append(copied(offline))
        return sorted(moved, key=lambda r: r.node_id)

    async def prune_workers(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete ``stopped``/``offline`` records last seen before ``before``; how many."""
        check_batch(limit)
        workers = (await self._reach()).workers
        gone = sorted(
            (r for r in workers.values() if r.state.value in GONE_STATES and r.last_seen_at < before),
            key=lambda r: (r.last_seen_at, r.node_id),
        )
        for record in gone[:limit]:
            del workers[record.node_id]
        return len(gone[:limit])
