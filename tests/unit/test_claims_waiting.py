"""The claimer's wait for another worker's lease, on a real (SQLite) store with a recording settler:
crafted wait headers can neither stretch the wait without bound nor make it skip a live task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskMessage
from taskplatform.models.message import AwaitOwner
from taskplatform.store import BaseTaskStore, create_store
from taskplatform.worker.claims import Claimer
from taskplatform.worker.config import WorkerConfig


class RecordingSettler:
    def __init__(self) -> None:
        self.rounds: list[tuple[datetime | None, AwaitOwner | None]] = []
        self.skipped: list[str] = []

    async def send_round(
        self,
        message: Any,
        tm: Any,
        why: str,
        *,
        not_before: datetime | None,
        await_owner: AwaitOwner | None = None,
    ) -> bool:
        self.rounds.append((not_before, await_owner))
        return True

    async def skip(self, message: Any, why: str) -> None:
        self.skipped.append(why)


class Redelivery:
    redelivered = True
    message_id = "m1"
    headers: dict[str, Any] = {}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BaseTaskStore]:
    store = create_store(f"sqlite+aiosqlite:///{tmp_path}/claims.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _held_task(store: BaseTaskStore) -> BackgroundTask:
    task = BackgroundTask(task_type="test_noop")
    await store.create(task)
    lease = store.now() + timedelta(seconds=60)  # a live owner
    assert await store.try_set_running(task.id, attempt=0, node_id="alive", lease_until=lease)
    return task


def _claimer(store: BaseTaskStore, settler: RecordingSettler) -> Claimer:
    config = WorkerConfig(node_id="me", dead_letter_exchange="dlx", lease_seconds=10, prefetch=4)
    return Claimer(store, settler, config, running=set())  # type: ignore[arg-type]


async def test_a_wait_that_claims_to_start_in_the_future_waits_from_now(store: BaseTaskStore) -> None:
    task, settler = await _held_task(store), RecordingSettler()
    future = AwaitOwner("alive", store.now() + timedelta(days=365))
    got = await _claimer(store, settler).claim(
        Redelivery(),
        TaskMessage.for_task(task),
        await_owner=future,
        owner_wait_limit=30,  # type: ignore[arg-type]
    )
    assert got is None and settler.skipped == []
    [(not_before, wait)] = settler.rounds
    assert wait is not None and wait.since <= store.now()  # the bound counts from now, not next year
    assert not_before is not None


async def test_a_wait_past_its_bound_lets_the_message_go_and_leaves_the_task_to_its_owner(
    store: BaseTaskStore,
) -> None:
    task, settler = await _held_task(store), RecordingSettler()
    old = AwaitOwner("alive", store.now() - timedelta(seconds=31))
    got = await _claimer(store, settler).claim(
        Redelivery(),
        TaskMessage.for_task(task),
        await_owner=old,
        owner_wait_limit=30,  # type: ignore[arg-type]
    )
    assert got is None and settler.rounds == [] and len(settler.skipped) == 1
    current = await store.get(task.id)
    assert current is not None and current.execution_node_id == "alive"


async def test_a_redelivery_of_a_live_owners_task_waits_outside_until_the_lease_ends(
    store: BaseTaskStore,
) -> None:
    task, settler = await _held_task(store), RecordingSettler()
    got = await _claimer(store, settler).claim(Redelivery(), TaskMessage.for_task(task))  # type: ignore[arg-type]
    assert got is None and settler.skipped == []
    [(not_before, wait)] = settler.rounds
    assert wait is not None and wait.owner == "alive"
    assert not_before is not None and timedelta(seconds=59) < not_before - store.now() < timedelta(seconds=62)
