"""The in-memory store's own promises (the shared contract is ``tests/store``): chosen by URL,
its own data per store, kept across close and open, nothing shared with callers, outages on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from taskplatform.errors import DuplicateTaskError, StoreError
from taskplatform.models import BackgroundTask, utcnow
from taskplatform.store import create_store
from taskplatform.store.memory import MemoryTaskStore
from tests.store.helpers import make_dead_letter, make_task


def _lease_end() -> datetime:
    return utcnow() + timedelta(seconds=9)


@pytest.fixture
async def store() -> AsyncIterator[MemoryTaskStore]:
    s = create_store("memory://")
    assert isinstance(s, MemoryTaskStore)
    await s.open()
    yield s
    await s.close()


def test_memory_urls_choose_the_memory_store() -> None:
    for url in ("memory://", "memory://tests", "MEMORY://x"):
        store = create_store(url)
        assert isinstance(store, MemoryTaskStore) and store.url_scheme == "memory"


async def test_each_store_has_its_own_data(store: MemoryTaskStore) -> None:
    task = make_task()
    await store.create(task)
    other = create_store("memory://")
    await other.open()
    assert await other.get(task.id) is None
    await other.create(task)  # no clash: nothing is shared
    await other.close()


async def test_the_data_outlives_close_and_open(store: MemoryTaskStore) -> None:
    task = make_task()
    await store.create(task)
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.get(task.id)
    await store.open()
    assert (await store.get(task.id)) is not None


async def test_a_store_not_opened_refuses_every_operation() -> None:
    store = MemoryTaskStore()
    with pytest.raises(StoreError, match="not open"):
        await store.create(make_task())
    assert await store.answers() is False


async def test_an_outage_fails_every_operation_until_it_ends(store: MemoryTaskStore) -> None:
    task = make_task()
    await store.create(task)
    store.available = False
    assert await store.answers() is False
    with pytest.raises(StoreError, match="unavailable"):
        await store.get(task.id)
    with pytest.raises(StoreError, match="unavailable"):
        await store.try_set_running(
            task.id, attempt=0, node_id="n", lease_until=utcnow() + timedelta(seconds=9)
        )
    with pytest.raises(StoreError, match="unavailable"):
        await store.sync_clock()
    store.available = True
    assert await store.answers() is True
    claimed = await store.try_set_running(
        task.id, attempt=0, node_id="n", lease_until=utcnow() + timedelta(seconds=9)
    )
    assert claimed is not None


async def test_callers_never_hold_the_stored_state(store: MemoryTaskStore) -> None:
    task = make_task(parameters={"nested": {"n": [1]}}, tags=["a"])
    await store.create(task)
    task.parameters["nested"]["n"].append(2)  # the caller's copy, after creating
    read = await store.get(task.id)
    assert read is not None and read.parameters == {"nested": {"n": [1]}}
    read.parameters["nested"]["n"].append(3)  # a copy that was read
    read.tags.append("b")
    again = await store.get(task.id)
    assert again is not None and again.parameters == {"nested": {"n": [1]}} and again.tags == ["a"]
    page = await store.list()
    page.items[0].parameters["x"] = 1
    assert (await store.get(task.id)).parameters == {"nested": {"n": [1]}}  # type: ignore[union-attr]


async def test_dead_letters_read_back_are_copies(store: MemoryTaskStore) -> None:
    record, _ = await store.upsert_dead_letter(make_dead_letter())
    got = await store.get_dead_letter(record.id)
    assert got is not None
    got.headers["x-dead-reason"] = "changed"
    (await store.list_dead_letters()).items[0].properties["message_id"] = "changed"
    again = await store.get_dead_letter(record.id)
    assert again is not None
    assert again.headers["x-dead-reason"] == "max_retries" and again.properties["message_id"] != "changed"


async def test_an_idempotency_key_is_unique_per_user_and_a_batch_is_all_or_nothing(
    store: MemoryTaskStore,
) -> None:
    first = make_task(user_id="u", idempotency_key="k")
    await store.create(first)
    fresh = make_task()
    with pytest.raises(DuplicateTaskError):
        await store.create_many([fresh, make_task(user_id="u", idempotency_key="k")])
    with pytest.raises(DuplicateTaskError):
        await store.create_many([fresh, fresh.model_copy()])
    assert await store.get(fresh.id) is None  # nothing of a refused batch is kept
    await store.create(make_task(user_id="other", idempotency_key="k"))  # another user's scope
    found = await store.find_by_idempotency_key("u", "k")
    assert isinstance(found, BackgroundTask) and found.id == first.id
