"""The TaskStore contract, roll-up: a parent counts each child once, in its latest bucket."""

from __future__ import annotations

import asyncio
import random

import pytest

from taskplatform.models import BackgroundTask, SubTaskStatusSummary, TaskStatus
from taskplatform.store import BaseTaskStore
from taskplatform.store.types import ParentState
from tests.store.helpers import NODE, claim, make_task

S = TaskStatus


def counts(task: BackgroundTask | None) -> dict[str, int]:
    assert task is not None and task.sub_task_status_summary is not None
    return {k: v for k, v in task.sub_task_status_summary.model_dump().items() if v}


async def parent_with_children(store: BaseTaskStore, n: int) -> tuple[BackgroundTask, list[BackgroundTask]]:
    parent = make_task()
    children = [make_task(parent_task_id=parent.id) for _ in range(n)]
    await store.create_many([parent, *children])
    return parent, children


async def test_a_parent_has_no_summary_until_its_first_roll_up(store: BaseTaskStore) -> None:
    parent, (child,) = await parent_with_children(store, 1)
    got = await store.get(parent.id)
    assert got is not None and got.sub_task_status_summary is None
    after = await store.apply_rollup(parent.id, child.id, S.QUEUED, 1)
    assert counts(after) == {"total": 1, "queued": 1}
    assert after is not None and after.version == parent.version + 1
    stored = await store.get(parent.id)
    assert counts(stored) == {"total": 1, "queued": 1}
    assert stored is not None and stored.version == after.version
    assert stored.updated_at >= got.updated_at  # as stored on both sides: BSON keeps milliseconds


async def test_a_newer_child_version_moves_the_child_between_buckets(store: BaseTaskStore) -> None:
    parent, (a, b) = await parent_with_children(store, 2)
    await store.apply_rollup(parent.id, a.id, S.QUEUED, 1)
    await store.apply_rollup(parent.id, b.id, S.QUEUED, 1)
    running = await store.apply_rollup(parent.id, a.id, S.RUNNING, 2)
    assert counts(running) == {"total": 2, "queued": 1, "running": 1}
    done = await store.apply_rollup(parent.id, a.id, S.COMPLETED, 4)
    assert counts(done) == {"total": 2, "queued": 1, "completed": 1}
    assert running is not None and done is not None and done.version == running.version + 1
    assert done.sub_task_status_summary is not None and done.sub_task_status_summary.finished == 1
    stored = await store.get(parent.id)  # the full document: its progress is the roll-up
    assert stored is not None and stored.progress == {"percent": 50.0, "message": "1 of 2 sub-tasks finished"}


async def test_the_same_child_version_twice_counts_once(store: BaseTaskStore) -> None:
    parent, (child,) = await parent_with_children(store, 1)
    first = await store.apply_rollup(parent.id, child.id, S.RUNNING, 2)
    second = await store.apply_rollup(parent.id, child.id, S.RUNNING, 2)
    assert counts(second) == {"total": 1, "running": 1}
    assert first is not None and second is not None and second.version == first.version


async def test_a_stale_roll_up_arriving_late_is_ignored(store: BaseTaskStore) -> None:
    parent, (child,) = await parent_with_children(store, 1)
    newer = await store.apply_rollup(parent.id, child.id, S.COMPLETED, 3)
    older = await store.apply_rollup(parent.id, child.id, S.RUNNING, 2)
    first_sight = await store.apply_rollup(parent.id, child.id, S.QUEUED, 1)
    assert counts(first_sight) == {"total": 1, "completed": 1}
    assert newer is not None and older is not None and older.version == newer.version


async def test_a_newer_version_in_the_same_bucket_makes_older_ones_stale(store: BaseTaskStore) -> None:
    parent, (child,) = await parent_with_children(store, 1)
    await store.apply_rollup(parent.id, child.id, S.RUNNING, 2)
    renewed = await store.apply_rollup(parent.id, child.id, S.RUNNING, 5)  # e.g. lease renewals
    late = await store.apply_rollup(parent.id, child.id, S.COMPLETED, 4)
    assert counts(late) == {"total": 1, "running": 1}
    assert renewed is not None and late is not None and late.version == renewed.version


async def test_roll_up_into_an_unknown_parent_is_none(store: BaseTaskStore) -> None:
    child = make_task()
    await store.create(child)
    assert await store.apply_rollup("missing", child.id, S.QUEUED, 1) is None
    assert await store.apply_rollups("missing", [(child.id, S.QUEUED, 1)]) is None
    assert await store.rollup_children("missing") is None


async def test_roll_up_rejects_child_ids_that_cannot_key_the_ledger(store: BaseTaskStore) -> None:
    parent, _ = await parent_with_children(store, 0)
    for bad in ("a.b", "$x", ""):
        with pytest.raises(ValueError):
            await store.apply_rollup(parent.id, bad, S.QUEUED, 1)
    got = await store.get(parent.id)
    assert got is not None and got.sub_task_status_summary is None and got.version == parent.version


@pytest.mark.parametrize("batched", [False, True], ids=["one", "batch"])
async def test_a_childs_roll_up_into_a_second_parent_is_refused(store: BaseTaskStore, batched: bool) -> None:
    first, second = make_task(), make_task()
    child = make_task(parent_task_id=first.id)
    await store.create_many([first, second, child])
    assert await store.apply_rollup(first.id, child.id, S.QUEUED, 1) is not None

    with pytest.raises(ValueError, match=f"task {child.id} is a child of {first.id}, not of {second.id}"):
        if batched:
            await store.apply_rollups(second.id, [(child.id, S.COMPLETED, 2)])
        else:
            await store.apply_rollup(second.id, child.id, S.COMPLETED, 2)

    got = await store.get(second.id)
    assert got is not None and got.sub_task_status_summary is None and got.version == second.version
    assert counts(await store.get(first.id)) == {"total": 1, "queued": 1}
    # the parent that counts it still takes its roll-ups
    assert await store.apply_rollup(first.id, child.id, S.COMPLETED, 2) is not None
    assert counts(await store.get(first.id)) == {"total": 1, "completed": 1}


async def test_a_child_counted_nowhere_else_rolls_into_the_parent_it_is_given(store: BaseTaskStore) -> None:
    # Not the parent its document names, nor one with a document at all: only a parent that
    # already counts the child stands in the way.
    named, given = make_task(), make_task()
    child = make_task(parent_task_id=named.id)
    await store.create_many([named, given, child])

    assert await store.apply_rollup(given.id, child.id, S.QUEUED, 1) is not None
    assert await store.apply_rollup(given.id, "no-such-child", S.RUNNING, 1) is not None

    assert counts(await store.get(given.id)) == {"total": 2, "queued": 1, "running": 1}
    got = await store.get(named.id)
    assert got is not None and got.sub_task_status_summary is None


async def test_concurrent_roll_ups_of_many_children_are_exact(store: BaseTaskStore) -> None:
    parent, children = await parent_with_children(store, 50)
    steps = [(S.QUEUED, 1), (S.RUNNING, 2), (S.COMPLETED, 3)]
    work = [(c.id, status, version) for c in children for status, version in steps] * 2  # duplicates too
    random.Random(7).shuffle(work)
    results = await asyncio.gather(
        *(store.apply_rollup(parent.id, *item) for item in work), return_exceptions=True
    )
    assert [r for r in results if not isinstance(r, ParentState)] == []
    after = await store.get(parent.id)
    assert counts(after) == {"total": 50, "completed": 50}
    assert after is not None and after.sub_task_status_summary is not None
    assert after.sub_task_status_summary.all_succeeded and after.sub_task_status_summary.pending == 0


async def test_concurrent_batches_into_one_parent_are_exact(store: BaseTaskStore) -> None:
    parent, children = await parent_with_children(store, 40)
    batches = [[(c.id, S.QUEUED, 1) for c in children[i : i + 10]] for i in range(0, 40, 10)]
    batches += [[(c.id, S.FAILED, 2) for c in children[i : i + 5]] for i in range(0, 40, 5)]
    random.Random(3).shuffle(batches)
    results = await asyncio.gather(
        *(store.apply_rollups(parent.id, b) for b in batches), return_exceptions=True
    )
    assert [r for r in results if not isinstance(r, ParentState)] == []
    assert counts(await store.get(parent.id)) == {"total": 40, "failed": 40}


async def test_apply_rollups_counts_a_batch_like_one_by_one(store: BaseTaskStore) -> None:
    parent, (a, b, c) = await parent_with_children(store, 3)
    items = [
        (a.id, S.QUEUED, 1),
        (b.id, S.QUEUED, 1),
        (a.id, S.RUNNING, 2),
        (a.id, S.QUEUED, 1),  # stale within the batch
        (c.id, S.DEAD_LETTER, 4),
        (b.id, S.QUEUED, 1),  # duplicate within the batch
    ]
    after = await store.apply_rollups(parent.id, items)
    assert counts(after) == {"total": 3, "queued": 1, "running": 1, "dead_letter": 1}
    again = await store.apply_rollups(parent.id, items)
    assert counts(again) == counts(after)
    assert again is not None and after is not None and again.version == after.version
    assert await store.apply_rollups(parent.id, []) == again


async def test_the_ledger_survives_other_updates_of_the_parent(store: BaseTaskStore) -> None:
    parent, (child,) = await parent_with_children(store, 1)
    await store.apply_rollup(parent.id, child.id, S.QUEUED, 1)
    await claim(store, parent)
    waiting = await store.set_awaiting_children(parent.id, node_id=NODE, attempt=0, result={"r": 1})
    assert waiting is not None and counts(waiting) == {"total": 1, "queued": 1}
    again = await store.apply_rollup(parent.id, child.id, S.QUEUED, 1)
    assert counts(again) == {"total": 1, "queued": 1}
    assert again is not None and again.version == waiting.version


async def test_rollup_children_heals_a_missing_roll_up(store: BaseTaskStore) -> None:
    parent, (ran, done, untouched) = await parent_with_children(store, 3)
    await store.apply_rollups(parent.id, [(c.id, c.status, c.version) for c in (ran, done)])
    # Children move on; their roll-ups are lost (say, a crash before they were applied).
    await claim(store, ran)
    await claim(store, done)
    await store.record_completion(done.id, node_id=NODE, attempt=0, result={})
    healed = await store.rollup_children(parent.id)
    assert counts(healed) == {"total": 3, "queued": 1, "running": 1, "completed": 1}
    again = await store.rollup_children(parent.id)
    assert again is not None and healed is not None and again.version == healed.version
    assert again.sub_task_status_summary == SubTaskStatusSummary(total=3, queued=1, running=1, completed=1)


async def test_rollup_children_pages_through_every_child(store: BaseTaskStore) -> None:
    parent, children = await parent_with_children(store, 501)  # more than one page
    healed = await store.rollup_children(parent.id)
    assert counts(healed) == {"total": 501, "queued": 501}


async def test_a_parent_without_children_reconciles_to_itself(store: BaseTaskStore) -> None:
    parent, _ = await parent_with_children(store, 0)
    got = await store.rollup_children(parent.id)
    assert got is not None and got.sub_task_status_summary is None and got.version == parent.version
