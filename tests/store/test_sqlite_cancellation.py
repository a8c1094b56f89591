"""Store calls cancelled midway (a worker stopping, a time-out) leave no SQLite connection behind
for the garbage collector to find later (it would warn at an arbitrary moment, an error here)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.store.sql import SqlTaskStore
from tests.support.garbage import collect_garbage_or_fail


async def test_store_calls_cancelled_at_any_point_return_their_connections(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db")
    await store.open()
    try:
        task = BackgroundTask(task_type="test_noop")
        await store.create(task)
        # Cancellations spread over the first 5 ms of a read or a write (connection checkout,
        # statement, return), until 150 landed midway: when the driver's isolation level was
        # switched at each checkout, about one in forty landed in that switch and stranded its
        # connection.
        cancelled = k = 0
        while cancelled < 150:
            assert k < 5000, f"only {cancelled} of {k} calls were still running 0-5 ms after they began"
            call = store.get(task.id) if k % 2 else store.create(BackgroundTask(task_type="test_noop"))
            running = asyncio.ensure_future(call)
            await asyncio.sleep((k % 50) * 0.0001)
            cancelled += running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            k += 1
        got = await store.get(task.id)
        assert got is not None and got.status is TaskStatus.QUEUED  # the store still answers
    finally:
        await store.close()
    collect_garbage_or_fail("store calls cancelled midway")
