"""The TaskStore contract at its edges, on every backend: empty batches are no-ops, a claim
stops at its limit, calls that name nothing to do or a status they cannot set are refused, and a
child's ledger entry belongs to one parent."""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskplatform.errors import DuplicateTaskError
from taskplatform.models import ErrorInfo, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore
from tests.store.helpers import NODE, claim, make_task

S = TaskStatus


async def test_empty_batches_are_no_ops(store: BaseTaskStore) -> None:
    await store.create_many([])
    lease = store.now() + timedelta(seconds=30)
    assert await store.try_set_running_many([], node_id=NODE, lease_until=lease) == {}
    assert await store.record_completions([], node_id=NODE) == {}
    assert await store.mark_published([], owner="relay") == 0
    assert (await store.backlog()).outbox_pending == 0


async def test_an_outbox_claim_takes_at_most_its_limit_oldest_first(store: BaseTaskStore) -> None:
    now = utcnow()
    tasks = [make_task(created_at=now - timedelta(seconds=60 - i)) for i in range(3)]
    await store.create_many(tasks)
    lease = store.now() + timedelta(seconds=30)

    first = await store.claim_pending_outbox(owner="r1", limit=2, lease_until=lease, created_before=utcnow())
    rest = await store.claim_pending_outbox(owner="r2", limit=2, lease_until=lease, created_before=utcnow())

    assert [t.id for t in first] == [tasks[0].id, tasks[1].id]
    assert [t.id for t in rest] == [tasks[2].id]


async def test_a_backlog_is_leased_in_batches_of_the_limit(store: BaseTaskStore) -> None:
    # A relay pass after an outage takes one batch, not the whole backlog (PostgreSQL once re-ran
    # the limited pick per row it updated and leased every entry at once).
    now = utcnow()
    backlog = [make_task(created_at=now - timedelta(seconds=60 - i)) for i in range(7)]
    await store.create_many(backlog)
    lease = store.now() + timedelta(seconds=30)

    batches = [
        await store.claim_pending_outbox(owner=f"r{n}", limit=3, lease_until=lease, created_before=utcnow())
        for n in range(4)
    ]

    assert [[t.id for t in batch] for batch in batches] == [
        [t.id for t in backlog[0:3]],
        [t.id for t in backlog[3:6]],
        [backlog[6].id],
        [],
    ]


async def test_an_amend_naming_no_change_is_refused(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    with pytest.raises(ValueError, match="at least one of"):
        await store.amend_queued(task.id)
    got = await store.get(task.id)
    assert got is not None and got.version == task.version


@pytest.mark.parametrize("status", [S.COMPLETED, S.RETRYING, S.QUEUED])
async def test_record_failure_refuses_a_status_that_is_not_a_failure(store: BaseTaskStore, status: S) -> None:
    task = make_task()
    await store.create(task)
    running = await claim(store, task)
    assert running is not None
    error = ErrorInfo(type="ValueError", message="boom", attempt=0)
    with pytest.raises(ValueError, match="FAILED or DEAD_LETTER"):
        await store.record_failure(task.id, node_id=NODE, attempt=0, error=error, status=status)
    got = await store.get(task.id)
    assert got is not None and got.status is S.RUNNING


async def test_a_publish_failure_of_a_task_missing_or_published_changes_nothing(store: BaseTaskStore) -> None:
    await store.record_publish_failure("no-such-task", "broker down")  # no error, nothing made
    assert await store.get("no-such-task") is None
    task = make_task(created_at=utcnow() - timedelta(seconds=60))
    await store.create(task)
    lease = store.now() + timedelta(seconds=30)
    assert await store.claim_pending_outbox(owner="r1", limit=1, lease_until=lease, created_before=utcnow())
    assert await store.mark_published([task.id], owner="r1") == 1
    published = await store.get(task.id)

    await store.record_publish_failure(task.id, "broker down")

    got = await store.get(task.id)
    assert published is not None and got is not None
    assert got.outbox.status is published.outbox.status and got.outbox.attempts == 0
    assert got.outbox.last_error is None and got.version == published.version


async def test_the_delete_primitive_deletes_only_the_finished_tasks_it_is_given(store: BaseTaskStore) -> None:
    # ``_delete_finished`` is what delete_task and retention share: it checks the status again, so
    # a task replayed since the caller looked is kept (and so is one it was not given).
    done = make_task(status=S.COMPLETED, completed_at=utcnow())
    replayed = make_task(status=S.QUEUED)
    other = make_task(status=S.COMPLETED, completed_at=utcnow())
    await store.create_many([done, replayed, other])

    assert await store._delete_finished([]) == []
    assert await store._delete_finished([replayed.id, "no-such-task"]) == []
    assert await store._delete_finished([done.id, replayed.id]) == [done.id]

    assert await store.get(done.id) is None
    assert await store.get(replayed.id) is not None and await store.get(other.id) is not None


async def test_a_batch_holding_an_existing_id_inserts_nothing(store: BaseTaskStore) -> None:
    """``create_many`` is all or nothing: a task id that exists refuses the batch, and the tasks
    before it in the batch are not left behind (MongoDB's ordered insert keeps them: taken back)."""
    taken = make_task()
    await store.create(taken)
    before, after = make_task(), make_task()
    with pytest.raises(DuplicateTaskError):
        await store.create_many([before, taken.model_copy(), after])
    assert await store.get(before.id) is None and await store.get(after.id) is None
    assert await store.get(taken.id) is not None
    await store.create_many([before, after])  # their ids are free
    assert await store.get(before.id) is not None and await store.get(after.id) is not None
