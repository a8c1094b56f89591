"""Changing waiting tasks (``amend_queued``), deleting finished ones (``delete_task``) and retention
(``purge_finished``), on every backend."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore
from taskplatform.store.base import Deletion
from tests.store.helpers import make_dead_letter, make_task

S = TaskStatus


def finished(status: TaskStatus = S.COMPLETED, *, ago: float = 0.0, **fields: object) -> BackgroundTask:
    return make_task(status=status, completed_at=utcnow() - timedelta(seconds=ago), **fields)


async def test_a_finished_task_is_deleted_and_its_dead_letter_record_stays(store: BaseTaskStore) -> None:
    dead = finished(S.DEAD_LETTER)
    await store.create(dead)
    await store.upsert_dead_letter(make_dead_letter(task_id=dead.id))
    outcome = await store.delete_task(dead.id)
    assert outcome.result is Deletion.DELETED and outcome.deleted == (dead.id,)
    assert await store.get(dead.id) is None
    assert await store.get_dead_letter(dead.id) is not None
    assert (await store.delete_task(dead.id)).result is Deletion.NOT_FOUND


async def test_a_task_that_has_not_finished_is_not_deleted(store: BaseTaskStore) -> None:
    for status in (S.QUEUED, S.RUNNING, S.RETRYING):
        task = make_task(status=status)
        await store.create(task)
        outcome = await store.delete_task(task.id)
        assert outcome.result is Deletion.ACTIVE and outcome.deleted == ()
        assert outcome.blocking is not None and outcome.blocking.id == task.id
        assert await store.get(task.id) is not None


async def test_a_parent_goes_with_every_sub_task_under_it(store: BaseTaskStore) -> None:
    parent = finished(S.COMPLETED_WITH_ERRORS)
    children = [
        finished(S.COMPLETED, parent_task_id=parent.id),
        finished(S.DEAD_LETTER, parent_task_id=parent.id),
    ]
    grandchild = finished(S.CANCELLED, parent_task_id=children[0].id)
    other = finished(S.COMPLETED)
    await store.create_many([parent, *children, grandchild, other])
    await store.apply_rollup(parent.id, children[0].id, S.COMPLETED, 2)
    # a sub-task goes with its parent, not alone
    alone = await store.delete_task(children[0].id)
    assert alone.result is Deletion.SUB_TASK and await store.get(children[0].id) is not None
    outcome = await store.delete_task(parent.id)
    assert outcome.result is Deletion.DELETED
    assert outcome.deleted[0] == parent.id
    assert set(outcome.deleted) == {parent.id, *(c.id for c in children), grandchild.id}
    for task in (parent, *children, grandchild):
        assert await store.get(task.id) is None
    assert await store.get(other.id) is not None


async def test_a_parent_with_a_sub_task_still_running_is_not_deleted(store: BaseTaskStore) -> None:
    parent = finished(S.CANCELLED)
    done = finished(S.COMPLETED, parent_task_id=parent.id)
    stopping = make_task(status=S.RUNNING, parent_task_id=parent.id)
    await store.create_many([parent, done, stopping])
    outcome = await store.delete_task(parent.id)
    assert outcome.result is Deletion.ACTIVE and outcome.deleted == ()
    assert outcome.blocking is not None and outcome.blocking.id == stopping.id
    assert all([await store.get(t.id) for t in (parent, done, stopping)])


async def test_retention_purges_tasks_that_ended_before_the_cutoff_oldest_first(store: BaseTaskStore) -> None:
    ended = (S.COMPLETED, S.COMPLETED_WITH_ERRORS, S.CANCELLED)
    old = [finished(status, ago=3600 + i) for i, status in enumerate(ended)]
    dead = [finished(status, ago=7200) for status in (S.DEAD_LETTER, S.FAILED)]  # wait for an operator
    recent = finished(S.COMPLETED, ago=60)
    waiting = make_task(status=S.QUEUED)
    await store.create_many([*old, *dead, recent, waiting])
    cutoff = utcnow() - timedelta(minutes=30)
    assert await store.purge_finished(before=cutoff, limit=2) == 2
    left = {t.id for t in old if await store.get(t.id) is not None}
    assert left == {old[0].id}  # the two that finished longest ago went first
    assert await store.purge_finished(before=cutoff) == 1
    assert await store.purge_finished(before=cutoff) == 0
    for kept in (*dead, recent, waiting):
        assert await store.get(kept.id) is not None, kept.status


async def test_a_purged_sub_task_stays_counted_by_its_waiting_parent(store: BaseTaskStore) -> None:
    parent = make_task(status=S.RUNNING, awaiting_children=True)
    old_child = finished(S.COMPLETED, ago=7200, parent_task_id=parent.id)
    running = make_task(status=S.RUNNING, parent_task_id=parent.id)
    await store.create_many([parent, old_child, running])
    await store.apply_rollups(parent.id, [(old_child.id, S.COMPLETED, 1), (running.id, S.RUNNING, 1)])
    assert await store.purge_finished(before=utcnow() - timedelta(hours=1)) == 1
    recounted = await store.rollup_children(parent.id)
    assert recounted is not None and recounted.sub_task_status_summary is not None
    summary = recounted.sub_task_status_summary
    assert (summary.total, summary.completed, summary.running) == (2, 1, 1)


async def test_a_queued_task_takes_new_tags_metadata_and_priority(store: BaseTaskStore) -> None:
    task = make_task(tags=["a"], metadata={"order": 1})
    await store.create(task)
    await store.mark_published([task.id])
    tagged = await store.amend_queued(task.id, tags=["b", "c"], metadata={"order": 2, "note": "x"})
    assert tagged is not None and tagged.tags == ["b", "c"] and tagged.metadata == {"order": 2, "note": "x"}
    assert tagged.priority == 0 and tagged.outbox.status.value == "published"  # no new message needed
    hold = utcnow() + timedelta(seconds=30)
    moved = await store.amend_queued(task.id, priority=8, publish_hold_until=hold, owner="api-1")
    assert moved is not None and moved.priority == 8 and moved.tags == ["b", "c"]
    assert moved.outbox.status.value == "pending" and moved.outbox.lease_owner == "api-1"
    assert moved.version == task.version + 3  # created, marked published, two changes
    assert await store.get(task.id) == moved


async def test_only_a_queued_task_can_be_changed(store: BaseTaskStore) -> None:
    for status in (S.RUNNING, S.RETRYING, S.COMPLETED, S.DEAD_LETTER):
        task = make_task(status=status)
        await store.create(task)
        assert await store.amend_queued(task.id, tags=["late"]) is None
        got = await store.get(task.id)
        assert got is not None and got.tags == [] and got.version == task.version
    assert await store.amend_queued("missing", priority=1) is None
