"""Worker registry records for tests: one written as if its worker last beat ``age`` seconds ago."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models.worker import MISSED_BEATS, WorkerRecord, WorkerState
from taskplatform.worker.presence import PresenceStore


async def beat_at_age(
    store: PresenceStore, node: str, *, age: float, state: WorkerState = WorkerState.ONLINE
) -> WorkerRecord:
    """Write ``node``'s record as of its last beat ``age`` seconds ago (store clock), beats every
    second: it expired ``age - 3`` seconds ago when that is positive."""
    seen_at = store.now() - timedelta(seconds=age)
    record = WorkerRecord(
        node_id=node,
        host="h",
        pid=1,
        concurrency=1,
        version="1",
        started_at=seen_at,
        last_seen_at=seen_at,
        heartbeat_seconds=1.0,
        expires_at=seen_at + timedelta(seconds=MISSED_BEATS),
        state=state,
    )
    await store.beat_worker(record)
    return record
