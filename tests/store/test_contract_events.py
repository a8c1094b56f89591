"""The TaskStore contract, event ids: every transition can record the event it applies."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models import ErrorInfo, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore
from taskplatform.store.base import CompletionRequest
from tests.store.helpers import NODE, claim, make_task

ERROR = ErrorInfo(type="ValueError", message="bad", attempt=0, node_id=NODE)


async def test_owner_transitions_write_their_event_id(store: BaseTaskStore) -> None:
    done, failed, retried, released, cancelled = tasks = [make_task() for _ in range(5)]
    await store.create_many(tasks)
    for t in tasks:
        await claim(store, t)
    later = utcnow() + timedelta(seconds=5)
    progressed = await store.record_progress(done.id, node_id=NODE, progress={"percent": 5.0}, event_id="e-p")
    assert progressed is not None and progressed.last_event_id == "e-p"
    results = [
        await store.record_completion(done.id, node_id=NODE, attempt=0, result={}, event_id="e-done"),
        await store.record_failure(
            failed.id, node_id=NODE, attempt=0, error=ERROR, status=TaskStatus.FAILED, event_id="e-failed"
        ),
        await store.record_retry(
            retried.id,
            node_id=NODE,
            attempt=0,
            error=ERROR,
            next_attempt_at=later,
            outbox_hold_until=later,
            event_id="e-retried",
        ),
        await store.release_claim(released.id, node_id=NODE, attempt=0, event_id="e-released"),
        await store.record_cancelled(cancelled.id, node_id=NODE, attempt=0, event_id="e-cancelled"),
    ]
    expected = ["e-done", "e-failed", "e-retried", "e-released", "e-cancelled"]
    assert [r.last_event_id if r is not None else None for r in results] == expected
    stored = [await store.get(t.id) for t in tasks]
    assert [t.last_event_id if t is not None else None for t in stored] == expected


async def test_reap_and_dead_letter_write_their_event_id(store: BaseTaskStore) -> None:
    lapsed, exhausted, poison = make_task(), make_task(), make_task()
    await store.create_many([lapsed, exhausted, poison])
    await claim(store, lapsed, lease=-10)
    await claim(store, exhausted, lease=-10)
    before = utcnow() - timedelta(seconds=5)
    info = ErrorInfo(type="WorkerLost", message="gone", attempt=0)
    again = await store.reap(
        lapsed.id, attempt=0, before=before, error=info, next_attempt_at=utcnow(), event_id="e-reaped"
    )
    failed = await store.reap(
        exhausted.id, attempt=0, before=before, error=info, next_attempt_at=None, event_id="e-lost"
    )
    dead = await store.mark_dead_letter(exhausted.id, error=None, attempt=0, event_id="e-dead")
    poisoned = await store.mark_dead_letter(poison.id, error=ERROR, attempt=0, event_id="e-poison")
    assert again is not None and again.last_event_id == "e-reaped"
    assert failed is not None and failed.last_event_id == "e-lost"
    assert dead is not None and dead.last_event_id == "e-dead"
    assert poisoned is not None and poisoned.last_event_id == "e-poison"


async def test_a_transition_without_event_id_keeps_the_last_one(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    await claim(store, task)
    await store.record_progress(task.id, node_id=NODE, progress={"percent": 1.0}, event_id="e-1")
    renewed = await store.renew_lease(task.id, node_id=NODE, attempt=0, lease_until=utcnow())
    assert renewed is not None and renewed.last_event_id == "e-1"
    done = await store.record_completion(task.id, node_id=NODE, attempt=0, result={})
    assert done is not None and done.last_event_id == "e-1"


async def test_batch_completions_write_each_items_event_id_and_return_versions(store: BaseTaskStore) -> None:
    with_event, without_event, not_ours = tasks = [make_task() for _ in range(3)]
    await store.create_many(tasks)
    await claim(store, with_event)
    await claim(store, without_event)
    await store.record_progress(without_event.id, node_id=NODE, progress={"percent": 1.0}, event_id="e-old")
    await claim(store, not_ours, node="other")
    items = [
        CompletionRequest(with_event.id, 0, {"n": 1}, event_id="e-a"),
        CompletionRequest(without_event.id, 0, {"n": 2}),
        CompletionRequest(not_ours.id, 0, {"n": 3}, event_id="e-c"),
    ]
    recorded = await store.record_completions(items, node_id=NODE)
    a, b, c = [await store.get(t.id) for t in tasks]
    assert a is not None and b is not None and c is not None
    assert recorded == {a.id: a.version, b.id: b.version}
    assert a.version == with_event.version + 2  # claim, completion
    assert (a.last_event_id, b.last_event_id, c.last_event_id) == ("e-a", "e-old", None)


async def test_cancellation_writes_its_event_id_when_it_changes_the_status(store: BaseTaskStore) -> None:
    waiting, running = make_task(), make_task()
    await store.create_many([waiting, running])
    await claim(store, running)
    cancelled = await store.request_cancel(waiting.id, event_id="e-cancel")
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert cancelled.last_event_id == "e-cancel"
    flagged = await store.request_cancel(running.id, event_id="e-flag")
    assert flagged is not None and flagged.status is TaskStatus.RUNNING and flagged.cancel_requested
    assert flagged.last_event_id is None  # only a flag: no lifecycle transition happened


async def test_a_completion_writes_the_progress_it_carries_and_keeps_it_otherwise(
    store: BaseTaskStore,
) -> None:
    carried, kept = tasks = [make_task() for _ in range(2)]
    await store.create_many(tasks)
    for t in tasks:
        await claim(store, t)
    await store.record_progress(kept.id, node_id=NODE, progress={"percent": 40.0, "message": "read"})
    final = {"percent": 60.0, "message": "scored"}
    done = await store.record_completions(
        [
            CompletionRequest(carried.id, 0, {"ok": True}, event_id="e1", progress=final),
            CompletionRequest(kept.id, 0, {"ok": True}, event_id="e2"),
        ],
        node_id=NODE,
    )
    assert set(done) == {carried.id, kept.id}
    got_carried, got_kept = await store.get(carried.id), await store.get(kept.id)
    # A completed task reads 100 % (test_contract_progress.py); the rest is what was reported.
    assert got_carried is not None and got_carried.progress == {"percent": 100.0, "message": "scored"}
    assert got_kept is not None and got_kept.progress == {"percent": 100.0, "message": "read"}
