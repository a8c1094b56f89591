"""The TaskStore contract, progress: a task whose work is done reads 100 %, on every backend and
whichever write finished it; tasks that ended otherwise keep what they last reported."""

from __future__ import annotations

from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus
from taskplatform.store import BaseTaskStore
from taskplatform.store.base import CompletionRequest, TaskFilter
from tests.store.helpers import NODE, claim, make_task

S = TaskStatus


async def running(store: BaseTaskStore, progress: dict[str, object] | None = None) -> BackgroundTask:
    task = make_task()
    await store.create(task)
    await claim(store, task)
    if progress is not None:
        assert await store.record_progress(task.id, node_id=NODE, progress=progress) is not None
    return task


async def test_a_completed_task_reads_complete_whatever_it_last_reported(store: BaseTaskStore) -> None:
    reported = await running(store, {"percent": 60.0, "message": "scoring", "stage": "score"})
    silent = await running(store)  # never reported any progress
    done = await store.record_completion(reported.id, node_id=NODE, attempt=0, result={"ok": True})
    assert done is not None and done.progress == {"percent": 100.0, "message": "scoring", "stage": "score"}
    await store.record_completion(silent.id, node_id=NODE, attempt=0, result=None)
    got, got_silent = await store.get(reported.id), await store.get(silent.id)
    assert got is not None and got.progress == {"percent": 100.0, "message": "scoring", "stage": "score"}
    assert got_silent is not None and got_silent.progress == {"percent": 100.0}
    listed = {t.id: t.progress for t in (await store.list(TaskFilter(status=S.COMPLETED))).items}
    assert listed == {reported.id: got.progress, silent.id: {"percent": 100.0}}


async def test_a_batched_completion_reads_complete_with_the_progress_it_carries(store: BaseTaskStore) -> None:
    # PostgreSQL and SQLite complete batches with statements of their own (pg_fast, statements).
    carried, kept = await running(store), await running(store, {"percent": 90.0, "message": "nearly"})
    versions = await store.record_completions(
        [
            CompletionRequest(carried.id, 0, {"ok": True}, progress={"percent": 60.0, "message": "last"}),
            CompletionRequest(kept.id, 0, {"ok": True}),
        ],
        node_id=NODE,
    )
    assert set(versions) == {carried.id, kept.id}
    got_carried, got_kept = await store.get(carried.id), await store.get(kept.id)
    assert got_carried is not None and got_carried.progress == {"percent": 100.0, "message": "last"}
    assert got_kept is not None and got_kept.progress == {"percent": 100.0, "message": "nearly"}


async def test_a_finished_parent_reads_complete(store: BaseTaskStore) -> None:
    parent = await running(store, {"percent": 30.0, "message": "splitting"})
    waiting = await store.set_awaiting_children(parent.id, node_id=NODE, attempt=0, result=None)
    assert waiting is not None and waiting.progress == {"percent": 30.0, "message": "splitting"}
    # No child was ever counted (it submitted none): the parent's own progress is all there is.
    done = await store.finish_parent(waiting.id, expected_version=waiting.version, status=S.COMPLETED)
    assert done is not None and done.progress == {"percent": 100.0, "message": "splitting"}
    got = await store.get(parent.id)
    assert got is not None and got.status is S.COMPLETED and got.progress == done.progress


async def test_tasks_that_did_not_complete_keep_their_last_progress(store: BaseTaskStore) -> None:
    progress = {"percent": 60.0, "message": "scoring"}
    failed, cancelled, waiting = (
        await running(store, progress),
        await running(store, progress),
        await running(store),
    )
    error = ErrorInfo(type="ValueError", message="bad", attempt=0)
    await store.record_failure(failed.id, node_id=NODE, attempt=0, error=error, status=S.DEAD_LETTER)
    await store.record_cancelled(cancelled.id, node_id=NODE, attempt=0)
    await store.record_progress(waiting.id, node_id=NODE, progress=progress)
    for task_id, status in ((failed.id, S.DEAD_LETTER), (cancelled.id, S.CANCELLED), (waiting.id, S.RUNNING)):
        got = await store.get(task_id)
        assert got is not None and got.status is status and got.progress == progress
