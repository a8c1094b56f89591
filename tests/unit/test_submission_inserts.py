"""Concurrent single submissions share one insert (an API process under load), and a batch the
store refuses costs only the submission at fault: on the memory store, without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from taskplatform.errors import DuplicateTaskError, StoreError, StoreRefused
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.submission import PublishedMarker, SubmitRequest, TaskSubmitter
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing.broker import FakePublisher
from tests.support.executables import EXECUTABLES


class CountingStore(MemoryTaskStore):
    """The memory store, counting ``create_many`` calls; ``refuse`` names task types whose rows
    it refuses (a batch holding one is refused whole), ``outage`` fails every insert, and
    ``keep_before_failure`` keeps the rows before a refused one (MongoDB's ordered insert)."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.batches: list[int] = []
        self.refuse: set[str] = set()
        self.outage = False
        self.keep_before_failure = False
        self.duplicate = False

    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        self.batches.append(len(tasks))
        if self.outage:
            raise StoreError("the store is unreachable (test)")
        bad = [i for i, t in enumerate(tasks) if t.parameters.get("value") == -99]
        if bad:
            if self.keep_before_failure:
                await super().create_many(tasks[: bad[0]])
            if self.duplicate:
                raise DuplicateTaskError("a task with this id exists (test)")
            raise StoreRefused("the store refused a row (test)")
        await super().create_many(tasks)


@pytest.fixture
async def parts() -> AsyncIterator[tuple[TaskSubmitter, CountingStore, FakePublisher]]:
    store = CountingStore()
    await store.open()
    bus = EventBus()
    bus.start()
    publisher = FakePublisher()
    marker = PublishedMarker(store)
    marker.start()
    registry = ExecutableRegistry(EXECUTABLES)
    submitter = TaskSubmitter(store, registry, publisher, marker, bus, node_id="n1")
    try:
        yield submitter, store, publisher
    finally:
        await marker.stop()
        await bus.close()
        await store.close()


def _request(value: int) -> SubmitRequest:
    return SubmitRequest(task_type="test_noop", parameters={"value": value})


async def _submit_all(submitter: TaskSubmitter, values: list[int]) -> list[Any]:
    return await asyncio.gather(*(submitter.submit(_request(v)) for v in values), return_exceptions=True)


async def test_concurrent_single_submissions_share_inserts_and_each_is_stored_and_published(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, publisher = parts
    results = await _submit_all(submitter, list(range(50)))
    assert all(r.created and r.published for r in results)
    assert sum(store.batches) == 50 and len(store.batches) < 5
    for r in results:
        assert await store.get(r.task.id) is not None
    assert sorted(p.message.task_id for p in publisher.published) == sorted(r.task.id for r in results)


async def test_a_lone_submission_is_inserted_at_once(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, _ = parts
    for value in (1, 2):
        await asyncio.wait_for(submitter.submit(_request(value)), 5)
    assert store.batches == [1, 1]


async def test_a_refused_row_fails_only_its_own_submission(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, publisher = parts
    values = [1, 2, -99, 3, 4]
    results = await _submit_all(submitter, values)
    assert isinstance(results[2], StoreRefused)
    stored = [r for i, r in enumerate(results) if i != 2]
    assert all(r.created and r.published for r in stored)
    for r in stored:
        assert await store.get(r.task.id) is not None
    assert len(publisher.published) == 4


async def test_rows_kept_before_a_failing_one_are_stored_not_failed(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, _publisher = parts
    store.keep_before_failure = store.duplicate = True
    results = await _submit_all(submitter, [1, 2, 3, -99, 5])
    assert isinstance(results[3], DuplicateTaskError)
    for i in (0, 1, 2, 4):
        assert results[i].created and await store.get(results[i].task.id) is not None


async def test_an_outage_fails_every_submission_of_the_batch(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, publisher = parts
    store.outage = True
    results = await _submit_all(submitter, [1, 2, 3])
    assert all(isinstance(r, StoreError) for r in results)
    assert len(store.batches) <= 3 and publisher.published == []


async def test_a_single_submission_alone_raises_the_stores_refusal(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, _ = parts
    with pytest.raises(StoreRefused):
        await submitter.submit(_request(-99))
    store.duplicate = True
    with pytest.raises(DuplicateTaskError):
        await submitter.submit(_request(-99))
    assert store.batches == [1, 1]


async def test_keyed_submissions_insert_on_their_own(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, _ = parts
    await asyncio.gather(*(submitter.submit(_request(i), idempotency_key=f"k{i}") for i in range(5)))
    assert store.batches == [1] * 5


async def test_a_submission_cancelled_while_it_waits_for_the_insert_stores_nothing(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, publisher = parts
    release = asyncio.Event()
    original = store.create_many

    async def slow_first(tasks: Sequence[BackgroundTask]) -> None:
        if not store.batches:
            await release.wait()
        await original(tasks)

    store.create_many = slow_first  # type: ignore[method-assign]
    first = asyncio.create_task(submitter.submit(_request(1)))
    await asyncio.sleep(0.01)  # the first insert is in flight: the next caller waits for it
    second = asyncio.create_task(submitter.submit(_request(2)))
    third = asyncio.create_task(submitter.submit(_request(3)))
    await asyncio.sleep(0.01)
    second.cancel()
    release.set()
    done, kept = await first, await third
    with pytest.raises(asyncio.CancelledError):
        await second
    assert store.batches == [1, 1]  # the third went alone: the cancelled one was not inserted
    assert {t.id for t in await _all(store)} == {done.task.id, kept.task.id}
    assert len(publisher.published) == 2


async def test_an_outage_while_inserting_one_by_one_fails_only_the_callers_not_yet_stored(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, _ = parts
    original = store.create_many

    async def outage_after_two(tasks: Sequence[BackgroundTask]) -> None:
        if len(store.batches) >= 3:  # the batch, then two alone: the store goes away
            store.batches.append(len(tasks))
            raise StoreError("the store went away (test)")
        await original(tasks)

    store.create_many = outage_after_two  # type: ignore[method-assign]
    results = await _submit_all(submitter, [1, 2, -99, 4])
    assert not isinstance(results[0], BaseException) and not isinstance(results[1], BaseException)
    assert isinstance(results[2], StoreError) and isinstance(results[3], StoreError)
    for r in results[:2]:
        assert await store.get(r.task.id) is not None


async def test_a_duplicate_whose_lookup_fails_is_that_callers_error(
    parts: tuple[TaskSubmitter, CountingStore, FakePublisher],
) -> None:
    submitter, store, _ = parts
    store.duplicate = True

    async def unreachable(task_id: str) -> BackgroundTask | None:
        raise StoreError("the store went away (test)")

    results = await _submit_all(submitter, [1, -99])
    assert not isinstance(results[0], BaseException) and isinstance(results[1], DuplicateTaskError)
    store.get = unreachable  # type: ignore[method-assign]
    results = await _submit_all(submitter, [2, -99])
    assert not isinstance(results[0], BaseException) and isinstance(results[1], StoreError)


async def _all(store: CountingStore) -> list[BackgroundTask]:
    from taskplatform.store import TaskFilter

    page = await store.list(TaskFilter(), limit=100)
    return list(page.items)
