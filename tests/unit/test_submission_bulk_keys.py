"""The bulk submitter's idempotency keys on the memory store: racing submissions with one key
make one task, a racing one with another task for the key is refused whole, keys no store can
hold, tasks stored before fingerprints, and a task id taken other than by a key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from taskplatform.errors import DuplicateTaskError
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask, TaskMessage
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.submission import (
    BulkItem,
    BulkSubmissionRefused,
    PublishedMarker,
    SubmitRequest,
    TaskSubmitter,
)
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.executables import EXECUTABLES


class _Publisher:
    ready = True

    async def publish_many(self, messages: Sequence[TaskMessage]) -> list[BaseException | None]:
        return [None] * len(messages)

    def count_failure(self, reason: str, n: int = 1) -> None:
        pass


@pytest.fixture
async def submitter() -> AsyncIterator[TaskSubmitter]:
    store = MemoryTaskStore()
    await store.open()
    bus = EventBus()
    bus.start()
    marker = PublishedMarker(store)
    marker.start()
    try:
        yield TaskSubmitter(store, ExecutableRegistry(EXECUTABLES), _Publisher(), marker, bus)
    finally:
        await marker.stop()
        await bus.close()


def keyed(value: int, key: str) -> BulkItem:
    return BulkItem(SubmitRequest(task_type="test_noop", parameters={"value": value}, user_id="u"), key)


async def test_racing_bulk_submissions_with_one_key_make_one_task(submitter: TaskSubmitter) -> None:
    a, b = await asyncio.gather(
        submitter.submit_bulk([keyed(1, "k"), keyed(2, "x")]),
        submitter.submit_bulk([keyed(3, "y"), keyed(1, "k")]),
    )
    assert a[0].task.id == b[1].task.id
    assert sorted([a[0].created, b[1].created]) == [False, True]  # the loser found the winner's task
    assert a[1].created and b[0].created


async def test_a_racing_submission_with_another_task_for_the_key_refuses_the_loser_whole(
    submitter: TaskSubmitter,
) -> None:
    results = await asyncio.gather(
        submitter.submit_bulk([keyed(1, "k")]),
        submitter.submit_bulk([keyed(3, "y"), keyed(2, "k")]),
        return_exceptions=True,
    )
    refusals = [r for r in results if isinstance(r, BulkSubmissionRefused)]
    assert len(refusals) == 1 and [p.code for p in refusals[0].problems] == ["idempotency_key_reused"]
    winner = next(r for r in results if isinstance(r, list))
    store = submitter._store
    assert sum((await store.count_by_status()).values()) == len(winner)  # none of the loser's


async def test_a_key_no_store_can_hold_is_refused_before_anything_is_stored(submitter: TaskSubmitter) -> None:
    with pytest.raises(BulkSubmissionRefused) as refused:
        await submitter.submit_bulk([keyed(1, "fine"), keyed(2, "a\x00b")])
    [problem] = refused.value.problems
    assert (problem.index, problem.code, problem.details["loc"]) == (
        1,
        "validation_error",
        ["idempotency_key"],
    )
    assert "1 of the submitted tasks are invalid, nothing was stored" in str(refused.value)
    assert await submitter._store.find_by_idempotency_key("u", "fine") is None


async def test_a_task_stored_without_a_fingerprint_is_returned_whatever_the_item(
    submitter: TaskSubmitter,
) -> None:
    legacy = BackgroundTask(task_type="test_noop", user_id="u", idempotency_key="legacy")
    await submitter._store.create_many([legacy])  # as before fingerprints were kept
    again, fresh = await submitter.submit_bulk([keyed(2, "legacy"), keyed(3, "fresh")])
    assert (again.task.id, again.created) == (legacy.id, False) and fresh.created


async def test_a_task_id_taken_other_than_by_a_key_is_a_store_refusal(submitter: TaskSubmitter) -> None:
    tasks, problems = submitter.prepare_bulk([BulkItem(SubmitRequest(task_type="test_noop"))])
    assert not problems
    await submitter._store.create_many(tasks)  # the same id is taken
    with pytest.raises(DuplicateTaskError, match="not by its key"):
        await submitter.submit_bulk_prepared(tasks)
