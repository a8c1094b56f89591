"""The attempt history on every backend: records round-trip, oldest first; a record written
again changes nothing; texts no store could hold are escaped; the history goes with its task
(deleted on request or by retention)."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models import utcnow
from taskplatform.models.attempt import AttemptOutcome, AttemptRecord
from taskplatform.store import BaseTaskStore
from taskplatform.store.types import CompletionRequest
from tests.store.helpers import make_task


def _record(task_id: str, n: int, **fields: object) -> AttemptRecord:
    started = utcnow() - timedelta(seconds=100 - 10 * n)
    started = started.replace(microsecond=started.microsecond // 1000 * 1000)  # BSON keeps ms
    values: dict[str, object] = {
        "id": f"{task_id}-{n}",
        "task_id": task_id,
        "generation": 0,
        "attempt": n,
        "node_id": "node-1",
        "host": "host-1",
        "started_at": started,
        "ended_at": started + timedelta(seconds=2.5),
        "duration_seconds": 2.5,
        "outcome": AttemptOutcome.FAILED,
        "error_type": "Transient",
        "error_message": f"try {n}",
        "retried": True,
    }
    values.update(fields)
    return AttemptRecord.model_validate(values)


async def _finished(store: BaseTaskStore) -> str:
    task = make_task()
    await store.create(task)
    lease = store.now() + timedelta(seconds=30)
    assert await store.try_set_running(task.id, attempt=0, node_id="node-1", lease_until=lease)
    assert await store.record_completion(task.id, attempt=0, node_id="node-1", result={})
    return task.id


async def test_attempts_are_read_back_whole_oldest_first(store: BaseTaskStore) -> None:
    task = make_task()
    other = make_task()
    await store.create_many([task, other])
    records = [_record(task.id, n) for n in range(3)]
    last = _record(
        task.id, 3, outcome=AttemptOutcome.COMPLETED, error_type=None, error_message=None, retried=False
    )
    await store.add_attempts([records[2], records[0]])
    await store.add_attempts([records[1], last, _record(other.id, 0)])
    got = await store.list_attempts(task.id)
    assert [r.id for r in got] == [r.id for r in (*records, last)]
    assert got[0] == records[0] and got[-1] == last
    assert got[0].started_at is not None and got[0].started_at.tzinfo is not None
    assert [r.id for r in await store.list_attempts(task.id, limit=2)] == [
        records[2].id,
        last.id,
    ]  # the newest
    assert [r.task_id for r in await store.list_attempts(other.id)] == [other.id]
    assert await store.list_attempts("no-such-task") == []


async def test_a_record_written_again_changes_nothing(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    first = _record(task.id, 0)
    await store.add_attempts([first])
    await store.add_attempts([first.model_copy(update={"error_message": "changed"}), first])
    assert await store.list_attempts(task.id) == [first]
    await store.add_attempts([])  # nothing to write


async def test_texts_no_store_could_hold_are_escaped_and_cut(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    nasty = _record(task.id, 0, error_type="Bad\x00Type", error_message="x\x00" + "y" * 5000, host="h\x00")
    await store.add_attempts([nasty])
    [got] = await store.list_attempts(task.id)
    assert got.error_type == "Bad\\u0000Type" and got.host == "h\\u0000"
    assert got.error_message is not None and got.error_message.startswith("x\\u0000y")
    assert len(got.error_message) == 2000 and got.error_message.endswith("…")


async def test_the_history_goes_with_its_task(store: BaseTaskStore) -> None:
    deleted, purged, kept = await _finished(store), await _finished(store), await _finished(store)
    for task_id in (deleted, purged, kept):
        await store.add_attempts([_record(task_id, 0, outcome=AttemptOutcome.COMPLETED)])
    assert (await store.delete_task(deleted)).deleted == (deleted,)
    cutoff = utcnow() + timedelta(seconds=1)
    # retention takes the oldest first: delete the purged one's peers afterwards
    while await store.get(purged) is not None:
        assert await store.purge_finished(before=cutoff, limit=1) == 1
    assert await store.list_attempts(deleted) == [] and await store.list_attempts(purged) == []
    if await store.get(kept) is not None:  # retention may have taken it too (finished later)
        assert len(await store.list_attempts(kept)) == 1


async def test_a_completion_writes_its_record_only_if_the_completion_is_made(store: BaseTaskStore) -> None:
    mine, stale = make_task(), make_task()
    await store.create_many([mine, stale])
    lease = store.now() + timedelta(seconds=30)
    for task in (mine, stale):
        assert await store.try_set_running(task.id, attempt=0, node_id="node-1", lease_until=lease)
    requests = [
        CompletionRequest(
            task_id=t.id,
            attempt=attempt,
            result={"ok": True},
            event_id=f"done-{t.id}",
            attempt_record=_record(
                t.id,
                0,
                id=f"done-{t.id}",
                outcome=AttemptOutcome.COMPLETED,
                error_type=None,
                error_message=None,
                retried=False,
            ),
        )
        for t, attempt in ((mine, 0), (stale, 1))  # the second names an attempt the task is not at
    ]
    done = await store.record_completions(requests, node_id="node-1")
    assert list(done) == [mine.id]
    [record] = await store.list_attempts(mine.id)
    assert record == requests[0].attempt_record
    assert await store.list_attempts(stale.id) == []
    assert await store.record_completions(requests, node_id="node-1") == {}  # done already: nothing again
    assert len(await store.list_attempts(mine.id)) == 1
