"""Aimed tasks in the store, on every backend: the target round-trips, and the fleet sweep's
query finds exactly the tasks aimed at a node that still wait to run there, oldest first."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models import ErrorInfo, TaskStatus, utcnow
from taskplatform.models.target import TaskTarget
from taskplatform.store import BaseTaskStore
from taskplatform.store.types import TaskFilter
from tests.store.helpers import make_task


async def test_a_target_is_stored_and_read_back_whole(store: BaseTaskStore) -> None:
    node = make_task(target=TaskTarget(node="db-1", target_timeout=12.5))
    labels = make_task(target=TaskTarget(labels={"role": "db", "zone": "b"}, mode="each"))
    plain = make_task()
    await store.create_many([node, labels, plain])
    for task in (node, labels, plain):
        got = await store.get(task.id)
        assert got is not None and got.target == task.target


async def test_the_sweep_finds_the_tasks_aimed_at_nodes_that_still_wait_oldest_first(
    store: BaseTaskStore,
) -> None:
    now = utcnow()
    older = make_task(target=TaskTarget(node="db-1"), created_at=now - timedelta(seconds=30))
    newer = make_task(target=TaskTarget(node="db-2"), created_at=now - timedelta(seconds=10))
    running = make_task(target=TaskTarget(node="db-1"), created_at=now - timedelta(seconds=40))
    retrying = make_task(target=TaskTarget(node="db-3"), created_at=now - timedelta(seconds=20))
    finished = make_task(target=TaskTarget(node="db-1"), created_at=now - timedelta(seconds=50))
    fan_out = make_task(target=TaskTarget(labels={"role": "db"}, mode="each"))
    untargeted = make_task(created_at=now - timedelta(seconds=60))
    await store.create_many([older, newer, running, retrying, finished, fan_out, untargeted])
    lease = store.now() + timedelta(seconds=60)
    for task in (running, retrying, finished):
        assert await store.try_set_running(task.id, attempt=0, node_id="db-1", lease_until=lease)
    error = ErrorInfo(type="E", message="again")
    soon = utcnow() + timedelta(seconds=5)
    assert await store.record_retry(
        retrying.id, attempt=0, node_id="db-1", error=error, next_attempt_at=soon, outbox_hold_until=soon
    )
    assert await store.record_completion(finished.id, attempt=0, node_id="db-1", result={})
    found = await store.list_aimed_waiting(limit=10)
    assert [t.id for t in found] == [older.id, retrying.id, newer.id]
    assert {t.status for t in found} == {TaskStatus.QUEUED, TaskStatus.RETRYING}
    assert [t.id for t in await store.list_aimed_waiting(limit=1)] == [older.id]
    # page by page, on from the last one read (the sweep's cursor)
    after_older = await store.list_aimed_waiting(limit=1, after=(older.created_at, older.id))
    assert [t.id for t in after_older] == [retrying.id]
    assert [t.id for t in await store.list_aimed_waiting(limit=5, after=(newer.created_at, newer.id))] == []


async def test_aimed_tasks_created_at_one_instant_page_by_their_id(store: BaseTaskStore) -> None:
    at = utcnow() - timedelta(seconds=30)
    same = [make_task(target=TaskTarget(node=f"db-{i}"), created_at=at) for i in range(3)]
    await store.create_many(same)
    ids = sorted(t.id for t in same)
    first = await store.list_aimed_waiting(limit=2)
    assert [t.id for t in first] == ids[:2]
    rest = await store.list_aimed_waiting(limit=2, after=(first[-1].created_at, first[-1].id))
    assert [t.id for t in rest] == ids[2:]


async def test_a_listing_by_node_finds_what_was_aimed_at_it_or_ran_there_page_by_page(
    store: BaseTaskStore,
) -> None:
    now = utcnow()
    parent = make_task()
    aimed = [
        make_task(
            parent_task_id=parent.id, target=TaskTarget(node="db-1"), created_at=now - timedelta(seconds=s)
        )
        for s in (1, 2, 3)
    ]
    ran = make_task(parent_task_id=parent.id, created_at=now - timedelta(seconds=4))
    elsewhere = make_task(parent_task_id=parent.id, target=TaskTarget(node="db-2"))
    await store.create_many([parent, *aimed, ran, elsewhere])
    lease = store.now() + timedelta(seconds=60)
    assert await store.try_set_running(ran.id, attempt=0, node_id="db-1", lease_until=lease)
    first = await store.list(TaskFilter(parent_task_id=parent.id, node="db-1"), limit=2)
    assert first.next_cursor is not None
    second = await store.list(
        TaskFilter(parent_task_id=parent.id, node="db-1"), limit=2, cursor=first.next_cursor
    )
    assert [t.id for t in first.items + second.items] == [*(t.id for t in aimed), ran.id]
    assert second.next_cursor is None
    others = await store.list(TaskFilter(node="db-2"))
    assert [t.id for t in others.items] == [elsewhere.id]
    assert (await store.list(TaskFilter(node="db-3"))).items == []
