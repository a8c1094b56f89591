"""Replaying a task from the dead letters (``replay_task``), on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from taskplatform.models import ErrorInfo, OutboxState, OutboxStatus, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore
from tests.store.helpers import NODE, claim, close_in_time, make_task

ERROR = ErrorInfo(type="ValueError", message="boom", attempt=3, node_id=NODE, reason="max_retries")


def _dead_task(**overrides: object):  # type: ignore[no-untyped-def]
    """A dead task with every field a replay resets set to something else."""
    now = utcnow()
    fields: dict[str, object] = {
        "status": TaskStatus.DEAD_LETTER,
        "retry_count": 3,
        "result": {"partial": True},
        "error_info": ERROR,
        "started_at": now - timedelta(seconds=30),
        "completed_at": now - timedelta(seconds=5),
        "last_attempt_at": now - timedelta(seconds=10),
        "next_attempt_at": now + timedelta(seconds=60),
        "lease_until": now + timedelta(seconds=60),
        "execution_node_id": NODE,
        "cancel_requested": True,
        "awaiting_children": True,
        "last_event_id": "evt-dead",
        "progress": {"percent": 40},
        "outbox": OutboxState(
            status=OutboxStatus.PUBLISHED,
            attempts=2,
            lease_until=now + timedelta(seconds=60),
            lease_owner="relay-1",
            published_at=now - timedelta(seconds=40),
            last_error="connection reset",
        ),
    }
    fields.update(overrides)
    return make_task(**fields)


async def test_replaying_a_dead_task_starts_it_over_as_the_next_generation(store: BaseTaskStore) -> None:
    task = _dead_task()
    await store.create(task)
    replayed = await store.replay_task(task.id, expected_replays=0, event_id="evt-replay")
    assert replayed is not None
    assert replayed.status is TaskStatus.QUEUED and replayed.replays == 1
    assert replayed.retry_count == 0 and replayed.result is None
    assert replayed.completed_at is None and replayed.started_at is None
    assert replayed.last_attempt_at is None and replayed.next_attempt_at is None
    assert replayed.lease_until is None and replayed.execution_node_id is None
    assert replayed.cancel_requested is False and replayed.awaiting_children is False
    assert replayed.outbox == OutboxState()  # pending, no attempts, no lease, never published
    assert replayed.last_event_id == "evt-replay"
    assert replayed.version == task.version + 1
    # kept: the last error stays visible, and what the task is
    assert replayed.error_info == ERROR
    assert replayed.parameters == task.parameters and replayed.progress == {"percent": 40}
    assert await store.get(task.id) == replayed


async def test_a_replayed_task_is_claimable_at_attempt_zero_and_pending_for_the_relay(
    store: BaseTaskStore,
) -> None:
    task = _dead_task()
    await store.create(task)
    replayed = await store.replay_task(task.id, expected_replays=0)
    assert replayed is not None
    # (created_before a second ahead: MongoDB keeps milliseconds, so "now" may equal created_at)
    leased = await store.claim_pending_outbox(
        owner="relay",
        limit=10,
        lease_until=utcnow() + timedelta(seconds=30),
        created_before=utcnow() + timedelta(seconds=1),
    )
    assert [t.id for t in leased] == [task.id]
    running = await claim(store, replayed)
    assert running is not None and running.retry_count == 0 and running.replays == 1


async def test_replaying_a_failed_task_with_new_parameters_replaces_them(store: BaseTaskStore) -> None:
    task = make_task(parameters={"text": "old", "max_sentences": 1})
    await store.create(task)
    assert await claim(store, task) is not None
    failed = await store.record_failure(
        task.id, node_id=NODE, attempt=0, error=ERROR, status=TaskStatus.FAILED
    )
    assert failed is not None and failed.status is TaskStatus.FAILED
    replayed = await store.replay_task(task.id, expected_replays=0, parameters={"text": "new"})
    assert replayed is not None
    assert replayed.status is TaskStatus.QUEUED and replayed.replays == 1
    assert replayed.parameters == {"text": "new"}
    assert replayed.error_info == ERROR and replayed.started_at is None
    assert replayed.outbox.status is OutboxStatus.PENDING


async def test_replay_without_parameters_keeps_the_stored_ones(store: BaseTaskStore) -> None:
    task = _dead_task(parameters={"text": "keep", "max_sentences": 2})
    await store.create(task)
    replayed = await store.replay_task(task.id, expected_replays=0)
    assert replayed is not None and replayed.parameters == {"text": "keep", "max_sentences": 2}


async def test_replay_is_guarded_on_the_generation(store: BaseTaskStore) -> None:
    task = _dead_task()
    await store.create(task)
    results = await asyncio.gather(*(store.replay_task(task.id, expected_replays=0) for _ in range(10)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    # it dies again in its second life: a replay of the first death must not take it
    assert await claim(store, winners[0]) is not None
    dead = await store.record_failure(
        task.id, node_id=NODE, attempt=0, error=ERROR, status=TaskStatus.DEAD_LETTER
    )
    assert dead is not None and dead.replays == 1
    assert await store.replay_task(task.id, expected_replays=0) is None
    again = await store.replay_task(task.id, expected_replays=1)
    assert again is not None and again.replays == 2 and again.status is TaskStatus.QUEUED


async def test_replay_leaves_tasks_that_are_not_dead_or_failed_alone(store: BaseTaskStore) -> None:
    queued, running, done = make_task(), make_task(), make_task()
    await store.create_many([queued, running, done])
    assert await claim(store, running) is not None
    assert await claim(store, done) is not None
    assert await store.record_completion(done.id, node_id=NODE, attempt=0, result={"ok": 1}) is not None
    for task, status in (
        (queued, TaskStatus.QUEUED),
        (running, TaskStatus.RUNNING),
        (done, TaskStatus.COMPLETED),
    ):
        before = await store.get(task.id)
        assert await store.replay_task(task.id, expected_replays=0) is None
        after = await store.get(task.id)
        assert after is not None and after.status is status and after.replays == 0
        assert before is not None and after.version == before.version
    assert await store.replay_task("no-such-task", expected_replays=0) is None


async def test_replay_keeps_the_creation_time_and_moves_updated_at(store: BaseTaskStore) -> None:
    task = _dead_task(updated_at=utcnow() - timedelta(hours=1))
    await store.create(task)
    replayed = await store.replay_task(task.id, expected_replays=0)
    assert replayed is not None
    assert close_in_time(replayed.created_at, task.created_at)
    assert replayed.updated_at > task.updated_at + timedelta(minutes=59)
