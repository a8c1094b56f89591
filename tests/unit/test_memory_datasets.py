"""The memory store's named datasets, and its refusal of a value the task model rejects.

``memory://name`` stores of one process share their data (two runtimes of one test see the
same tasks, as with one database); ``memory://`` stays private to each store. A write the model
refuses raises ``StoreRefused`` (a StoreError, which the claimer, recorder and reaper handle)
and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from taskplatform.errors import StoreError, StoreRefused
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.store import create_store
from taskplatform.store.memory import MemoryTaskStore, forget_dataset
from taskplatform.store.types import Guard

QUEUED = Guard(statuses=frozenset({TaskStatus.QUEUED}))


@pytest.fixture
def name() -> Iterator[str]:
    dataset = f"test-{uuid.uuid4().hex[:8]}"
    yield dataset
    forget_dataset(dataset)


async def _opened(url: str) -> MemoryTaskStore:
    store = create_store(url)
    assert isinstance(store, MemoryTaskStore)
    await store.open()
    return store


async def test_stores_of_one_name_share_their_data(name: str) -> None:
    api, worker = await _opened(f"memory://{name}"), await _opened(f"memory://{name}")
    task = BackgroundTask(task_type="t")
    await api.create(task)
    seen = await worker.get(task.id)
    assert seen is not None and seen.id == task.id
    assert await worker.request_cancel(task.id) is not None
    cancelled = await api.get(task.id)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert (await api.reserve_rate("k", interval=60.0, max_wait=0.0)).granted
    assert not (await worker.reserve_rate("k", interval=60.0, max_wait=0.0)).granted  # one limit


async def test_an_outage_is_of_one_store_object(name: str) -> None:
    down, up = await _opened(f"memory://{name}"), await _opened(f"memory://{name}")
    down.available = False
    with pytest.raises(StoreError):
        await down.get("x")
    assert await up.get("x") is None


async def test_plain_memory_urls_and_other_names_are_private(name: str) -> None:
    first, second = await _opened("memory://"), await _opened("memory://")
    other = await _opened(f"memory://{name}-other")
    task = BackgroundTask(task_type="t")
    await first.create(task)
    assert await second.get(task.id) is None
    assert await other.get(task.id) is None
    forget_dataset(f"{name}-other")


async def test_a_forgotten_dataset_starts_empty_for_the_next_store(name: str) -> None:
    kept = await _opened(f"memory://{name}")
    task = BackgroundTask(task_type="t")
    await kept.create(task)
    assert forget_dataset(name) is True
    assert forget_dataset(name) is False
    fresh = await _opened(f"memory://{name}")
    assert await fresh.get(task.id) is None
    assert await kept.get(task.id) is not None  # a store holding the dataset keeps it


@pytest.mark.parametrize("changes", [{"priority": -5}, {"priority": "x"}, {"status": "BOGUS"}, {"tags": "a"}])
async def test_a_value_the_model_refuses_raises_store_refused_and_changes_nothing(
    changes: dict[str, object],
) -> None:
    store = await _opened("memory://")
    task = BackgroundTask(task_type="t")
    await store.create(task)
    with pytest.raises(StoreRefused, match=f"store refused the write of task {task.id!r}"):
        await store._guarded_update(task.id, QUEUED, changes)
    after = await store.get(task.id)
    assert after is not None and after.version == task.version and after.priority == task.priority
    assert after.status is TaskStatus.QUEUED and after.tags == task.tags
