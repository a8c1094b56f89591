"""The TaskStore contract, parents and children: waiting for children, finishing, cancelling."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore
from taskplatform.store.base import ClaimRequest, CompletionRequest
from tests.store.helpers import NODE, claim, make_task

S = TaskStatus


async def awaiting_parent(store: BaseTaskStore, **fields: object) -> BackgroundTask:
    parent = make_task(**fields)
    await store.create(parent)
    await claim(store, parent)
    waiting = await store.set_awaiting_children(
        parent.id, node_id=NODE, attempt=0, result={"children": 2}, event_id="e-await"
    )
    assert waiting is not None
    return waiting


async def test_a_parent_waiting_for_children_keeps_running_without_lease(store: BaseTaskStore) -> None:
    waiting = await awaiting_parent(store)
    assert waiting.status is S.RUNNING and waiting.awaiting_children
    assert waiting.lease_until is None and waiting.result == {"children": 2}
    assert waiting.last_event_id == "e-await"
    got = await store.get(waiting.id)
    assert got is not None and got.awaiting_children and got.version == waiting.version


async def test_a_parent_waiting_for_children_has_no_owner(store: BaseTaskStore) -> None:
    waiting = await awaiting_parent(store)
    tid, far = waiting.id, utcnow() + timedelta(seconds=60)
    error = ErrorInfo(type="E", message="m")
    assert await store.record_completion(tid, node_id=NODE, attempt=0, result={}) is None
    assert await store.record_completions([CompletionRequest(tid, 0, {})], node_id=NODE) == {}
    assert await store.renew_lease(tid, node_id=NODE, attempt=0, lease_until=far) is None
    assert await store.record_progress(tid, node_id=NODE, progress={"percent": 1.0}) is None
    assert await store.release_claim(tid, node_id=NODE, attempt=0) is None
    assert await store.record_cancelled(tid, node_id=NODE, attempt=0) is None
    assert await store.record_failure(tid, node_id=NODE, attempt=0, error=error, status=S.FAILED) is None
    assert (
        await store.record_retry(
            tid, node_id=NODE, attempt=0, error=error, next_attempt_at=far, outbox_hold_until=far
        )
        is None
    )
    assert await store.set_awaiting_children(tid, node_id=NODE, attempt=0, result=None) is None
    assert await store.mark_dead_letter(tid, error=error, attempt=0) is None
    assert await store.try_set_running(tid, attempt=0, node_id="other", lease_until=far) is None
    assert await store.try_set_running_many([ClaimRequest(tid, 0, 0)], node_id="other", lease_until=far) == {}
    got = await store.get(tid)
    assert got is not None and got.version == waiting.version and got.awaiting_children


async def test_a_parent_waiting_for_children_is_never_reaped(store: BaseTaskStore) -> None:
    parent = make_task()
    await store.create(parent)
    await claim(store, parent, lease=-10)  # its lease had lapsed when the attempt ended
    waiting = await store.set_awaiting_children(parent.id, node_id=NODE, attempt=0, result=None)
    assert waiting is not None
    future = utcnow() + timedelta(days=1)
    assert await store.list_lapsed(before=future, limit=10) == []
    info = ErrorInfo(type="WorkerLost", message="gone")
    assert await store.reap(parent.id, attempt=0, before=future, error=info, next_attempt_at=None) is None


async def test_finish_parent_needs_the_version_that_saw_every_child_finish(store: BaseTaskStore) -> None:
    waiting = await awaiting_parent(store)
    child = make_task(parent_task_id=waiting.id)
    await store.create(child)
    after = await store.apply_rollup(waiting.id, child.id, S.COMPLETED, 3)
    assert after is not None and after.sub_task_status_summary is not None
    assert after.sub_task_status_summary.pending == 0 and after.version == waiting.version + 1
    stale = await store.finish_parent(waiting.id, expected_version=waiting.version, status=S.COMPLETED)
    assert stale is None
    with pytest.raises(ValueError):
        await store.finish_parent(waiting.id, expected_version=after.version, status=S.FAILED)
    done = await store.finish_parent(
        waiting.id, expected_version=after.version, status=S.COMPLETED_WITH_ERRORS, event_id="e-fin"
    )
    assert done is not None and done.status is S.COMPLETED_WITH_ERRORS
    assert not done.awaiting_children and done.completed_at is not None and done.last_event_id == "e-fin"
    assert done.result == {"children": 2}
    again = await store.finish_parent(waiting.id, expected_version=done.version, status=S.COMPLETED)
    assert again is None


async def test_finish_parent_leaves_a_task_that_is_not_waiting_alone(store: BaseTaskStore) -> None:
    running = make_task()
    await store.create(running)
    claimed = await claim(store, running)
    assert claimed is not None
    assert await store.finish_parent(running.id, expected_version=claimed.version, status=S.COMPLETED) is None


async def test_cancel_waiting_cancels_queued_tasks_and_waiting_parents_only(store: BaseTaskStore) -> None:
    queued, running, finished = make_task(), make_task(), make_task()
    await store.create_many([queued, running, finished])
    await claim(store, running)
    await claim(store, finished)
    await store.record_completion(finished.id, node_id=NODE, attempt=0, result={})
    waiting = await awaiting_parent(store)
    cancelled = await store.cancel_waiting(queued.id, event_id="e-q")
    assert cancelled is not None and cancelled.status is S.CANCELLED and cancelled.cancel_requested
    assert cancelled.completed_at is not None and cancelled.last_event_id == "e-q"
    parent = await store.cancel_waiting(waiting.id, event_id="e-p")
    assert parent is not None and parent.status is S.CANCELLED and not parent.awaiting_children
    assert parent.cancel_requested and parent.completed_at is not None and parent.last_event_id == "e-p"
    assert await store.cancel_waiting(running.id) is None
    assert await store.cancel_waiting(finished.id) is None
    assert await store.cancel_waiting(queued.id) is None
    assert await store.cancel_waiting("missing") is None
    still = await store.get(running.id)
    assert still is not None and still.status is S.RUNNING and not still.cancel_requested


async def test_flag_cancel_flags_only_an_executing_attempt_once(store: BaseTaskStore) -> None:
    queued, running = make_task(), make_task()
    await store.create_many([queued, running])
    await claim(store, running)
    waiting = await awaiting_parent(store)
    flagged = await store.flag_cancel(running.id)
    assert flagged is not None and flagged.status is S.RUNNING and flagged.cancel_requested
    assert await store.flag_cancel(running.id) is None
    assert await store.flag_cancel(queued.id) is None
    assert await store.flag_cancel(waiting.id) is None


async def test_request_cancel_cancels_a_waiting_parent_at_once(store: BaseTaskStore) -> None:
    waiting = await awaiting_parent(store)
    cancelled = await store.request_cancel(waiting.id, event_id="e-c")
    assert cancelled is not None and cancelled.status is S.CANCELLED and not cancelled.awaiting_children
    assert cancelled.last_event_id == "e-c"
    assert await store.list_awaiting_parents(updated_before=utcnow() + timedelta(days=1), limit=10) == []


async def test_list_awaiting_parents_oldest_update_first_before_the_cutoff(store: BaseTaskStore) -> None:
    running = make_task()  # running, not waiting for children
    await store.create(running)
    await claim(store, running)
    first = await awaiting_parent(store)
    await asyncio.sleep(0.02)
    second = await awaiting_parent(store)
    await asyncio.sleep(0.02)
    cutoff = utcnow()
    await asyncio.sleep(0.02)
    await awaiting_parent(store)  # too recent
    found = await store.list_awaiting_parents(updated_before=cutoff, limit=10)
    assert [p.id for p in found] == [first.id, second.id]
    assert all(p.awaiting_children for p in found)
    assert [p.id for p in await store.list_awaiting_parents(updated_before=cutoff, limit=1)] == [first.id]
    await store.finish_parent(first.id, expected_version=first.version, status=S.COMPLETED)
    found = await store.list_awaiting_parents(updated_before=cutoff, limit=10)
    assert [p.id for p in found] == [second.id]
