"""The task commands service on a real (SQLite) store, without a broker: each command's success
and its refusals (missing, another user's, wrong state, store outage), which the routes answer
as 404, 409 and 503."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from taskplatform.auth import SYSTEM, Principal, Role
from taskplatform.commands import BulkReplayRefused, NotQueued, TaskCommands, TaskConflict, TaskNotFound
from taskplatform.deadletters.service import DeadLetterConflict, DeadLetterNotFound, DeadLetterService
from taskplatform.errors import InvalidInputError, StoreError
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.models import (
    BackgroundTask,
    DeadLetter,
    DeadLetterStatus,
    ErrorInfo,
    TaskMessage,
    TaskStatus,
    utcnow,
)
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.store.sql import SqlTaskStore
from taskplatform.submission import PublishedMarker, TaskSubmitter
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.executables import EXECUTABLES

NODE = "node-1"
ALICE = Principal(subject="alice", roles=frozenset({Role.SUBMITTER}))
BOB = Principal(subject="bob", roles=frozenset({Role.SUBMITTER}))
OLGA = Principal(subject="olga", roles=frozenset({Role.OPERATOR}))


@dataclass
class FakePublisher:
    """Records what would have gone to the broker."""

    ready: bool = True
    sent: list[TaskMessage] = field(default_factory=list)

    async def publish_many(self, messages: Sequence[TaskMessage]) -> list[BaseException | None]:
        self.sent.extend(messages)
        return [None] * len(messages)

    def count_failure(self, reason: str, n: int = 1) -> None:
        pass


@dataclass
class Parts:
    store: SqlTaskStore
    publisher: FakePublisher
    commands: TaskCommands

    async def add(self, user: str = "alice", **fields: object) -> BackgroundTask:
        task = BackgroundTask(task_type="test_noop", user_id=user, **fields)  # type: ignore[arg-type]
        await self.store.create(task)
        return task

    async def running(self, task: BackgroundTask) -> BackgroundTask:
        lease = utcnow() + timedelta(seconds=60)
        claimed = await self.store.try_set_running(task.id, attempt=0, node_id=NODE, lease_until=lease)
        assert claimed is not None
        return claimed

    async def completed(self, task: BackgroundTask) -> BackgroundTask:
        await self.running(task)
        done = await self.store.record_completion(task.id, node_id=NODE, attempt=0, result={"value": 1})
        assert done is not None and done.status is TaskStatus.COMPLETED
        return done


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db")
    await store.open()
    bus = EventBus()
    aggregator = StateAggregator(store, bus, node_id=NODE).attach()
    bus.start()
    registry = ExecutableRegistry(EXECUTABLES)
    publisher = FakePublisher()
    marker = PublishedMarker(store)
    marker.start()
    submitter = TaskSubmitter(store, registry, publisher, marker, bus, aggregator=aggregator, node_id=NODE)
    dead_letters = DeadLetterService(store, registry, bus, submitter, node_id=NODE, default_rate=100.0)
    commands = TaskCommands(store, submitter, bus, dead_letters, node_id=NODE, max_bulk_seconds=60.0)
    try:
        yield Parts(store, publisher, commands)
    finally:
        await marker.stop()
        await bus.close()
        await store.close()


# ---------------------------------------------------------------- find
async def test_another_users_task_is_not_found_like_a_missing_one(parts: Parts) -> None:
    task = await parts.add("alice")
    assert (await parts.commands.find(task.id, ALICE)).id == task.id
    assert (await parts.commands.find(task.id, OLGA)).id == task.id  # operators see every user's
    assert (await parts.commands.find(task.id, SYSTEM)).id == task.id  # the platform itself
    with pytest.raises(TaskNotFound) as other:
        await parts.commands.find(task.id, BOB)
    with pytest.raises(TaskNotFound) as missing:
        await parts.commands.find("nope", ALICE)
    assert str(other.value) == f"task {task.id!r} not found"
    assert str(missing.value) == "task 'nope' not found"
    anonymous = Principal(subject=None, roles=frozenset({Role.SUBMITTER}))
    with pytest.raises(TaskNotFound):
        await parts.commands.find(task.id, anonymous)


# ---------------------------------------------------------------- cancel
async def test_cancel_ends_a_queued_task_and_flags_a_running_one(parts: Parts) -> None:
    queued = await parts.add()
    cancelled = await parts.commands.cancel(queued.id, ALICE)
    assert cancelled.status is TaskStatus.CANCELLED
    running = await parts.running(await parts.add())
    flagged = await parts.commands.cancel(running.id, ALICE)
    assert flagged.status is TaskStatus.RUNNING and flagged.cancel_requested


async def test_cancel_refuses_a_finished_task_a_missing_one_and_another_users(parts: Parts) -> None:
    done = await parts.completed(await parts.add())
    with pytest.raises(TaskConflict, match=r"is already COMPLETED; it cannot be cancelled"):
        await parts.commands.cancel(done.id, ALICE)
    with pytest.raises(TaskNotFound):
        await parts.commands.cancel("nope", ALICE)
    queued = await parts.add("alice")
    with pytest.raises(TaskNotFound):
        await parts.commands.cancel(queued.id, BOB)
    unchanged = await parts.store.get(queued.id)
    assert unchanged is not None and unchanged.status is TaskStatus.QUEUED


async def test_cancel_of_a_cancelled_task_answers_it_again(parts: Parts) -> None:
    task = await parts.add()
    await parts.commands.cancel(task.id, SYSTEM)
    again = await parts.commands.cancel(task.id, SYSTEM)
    assert again.status is TaskStatus.CANCELLED


async def test_a_store_outage_reaches_the_caller_as_a_store_error(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await parts.add()

    async def down(*_args: object, **_kwargs: object) -> None:
        raise StoreError("the store is down")

    monkeypatch.setattr(parts.store, "get", down)
    monkeypatch.setattr(parts.store, "get_visible", down)
    for command in (parts.commands.cancel, parts.commands.delete, parts.commands.amend):
        with pytest.raises(StoreError):
            await command(task.id, ALICE)


# ---------------------------------------------------------------- amend
async def test_amend_replaces_tags_and_metadata_of_a_queued_task(parts: Parts) -> None:
    task = await parts.add(tags=["draft"])
    amended = await parts.commands.amend(task.id, ALICE, tags=["ready", "eu", "ready"], metadata={"n": 1})
    assert amended.tags == ["ready", "eu"] and amended.metadata == {"n": 1}
    assert parts.publisher.sent == []  # same priority: the queued message is right already


async def test_a_new_priority_publishes_the_task_again_and_the_same_one_does_not(parts: Parts) -> None:
    task = await parts.add()
    unchanged = await parts.commands.amend(task.id, ALICE, priority=task.priority)
    assert unchanged.version == task.version and parts.publisher.sent == []
    moved = await parts.commands.amend(task.id, ALICE, priority=7)
    assert moved.priority == 7
    assert [(m.task_id, m.priority) for m in parts.publisher.sent] == [(task.id, 7)]


async def test_amend_refuses_a_task_that_is_not_queued_and_unstorable_input(parts: Parts) -> None:
    running = await parts.running(await parts.add())
    with pytest.raises(NotQueued, match=r"is RUNNING; only a QUEUED task can be changed") as refused:
        await parts.commands.amend(running.id, ALICE, tags=["x"])
    assert isinstance(refused.value, TaskConflict)
    queued = await parts.add()
    with pytest.raises(InvalidInputError, match="NUL"):
        await parts.commands.amend(queued.id, ALICE, tags=["a\x00b"])
    with pytest.raises(TaskNotFound):
        await parts.commands.amend(queued.id, BOB, tags=["x"])


async def test_amend_refuses_a_task_that_left_the_queue_meanwhile(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await parts.add()

    async def lost(*_args: object, **_kwargs: object) -> None:
        return None  # the conditional update found it no longer QUEUED

    monkeypatch.setattr(parts.store, "amend_queued", lost)
    with pytest.raises(NotQueued, match=r"is QUEUED; only a QUEUED task can be changed"):
        await parts.commands.amend(task.id, ALICE, tags=["x"])


# ---------------------------------------------------------------- delete
async def test_delete_removes_a_finished_task_and_refuses_an_active_one(parts: Parts) -> None:
    active = await parts.add()
    with pytest.raises(TaskConflict) as refused:
        await parts.commands.delete(active.id, ALICE)
    assert str(refused.value) == (
        f"task {active.id!r} cannot be deleted: it is QUEUED; cancel it or wait for it to finish"
    )
    done = await parts.completed(await parts.add())
    assert await parts.commands.delete(done.id, ALICE) == [done.id]
    assert await parts.store.get(done.id) is None
    with pytest.raises(TaskNotFound):
        await parts.commands.delete(done.id, ALICE)


async def test_delete_refuses_a_sub_task_and_another_users_task(parts: Parts) -> None:
    parent = await parts.completed(await parts.add())
    child = await parts.completed(await parts.add(parent_task_id=parent.id))
    with pytest.raises(TaskConflict, match=r"is a sub-task of .*: it is deleted with its parent"):
        await parts.commands.delete(child.id, ALICE)
    with pytest.raises(TaskNotFound):
        await parts.commands.delete(parent.id, BOB)
    assert sorted(await parts.commands.delete(parent.id, OLGA)) == sorted([parent.id, child.id])


async def test_delete_of_a_task_gone_meanwhile_is_not_found(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = await parts.completed(await parts.add())
    await parts.store.delete_task(done.id)
    monkeypatch.setattr(parts.commands, "find", _found(done))  # seen just before it went
    with pytest.raises(TaskNotFound):
        await parts.commands.delete(done.id, ALICE)


def _found(task: BackgroundTask):  # type: ignore[no-untyped-def]
    async def find(*_args: object, **_kwargs: object) -> BackgroundTask:
        return task

    return find


# ---------------------------------------------------------------- dead letters
async def _dead(parts: Parts) -> DeadLetter:
    task = await parts.running(await parts.add())
    error = ErrorInfo(type="ValueError", message="boom", attempt=0)
    dead = await parts.store.mark_dead_letter(task.id, error=error)
    assert dead is not None and dead.status is TaskStatus.DEAD_LETTER
    record = DeadLetter(id=task.id, task_id=task.id, task_type=task.task_type, reason="failed")
    stored, _ = await parts.store.upsert_dead_letter(record)
    return stored


async def test_replay_sends_a_dead_task_back_and_a_second_replay_conflicts(parts: Parts) -> None:
    record = await _dead(parts)
    replayed = await parts.commands.replay(record.id, actor="olga")
    assert replayed.task.status is TaskStatus.QUEUED and replayed.record.status is DeadLetterStatus.REPLAYED
    assert [m.task_id for m in parts.publisher.sent] == [record.task_id]
    with pytest.raises(DeadLetterConflict):
        await parts.commands.replay(record.id, actor="olga")
    assert (await parts.commands.dead_letter(record.id)).status is DeadLetterStatus.REPLAYED


async def test_dead_letter_commands_refuse_a_missing_record(parts: Parts) -> None:
    with pytest.raises(DeadLetterNotFound):
        await parts.commands.dead_letter("nope")
    with pytest.raises(DeadLetterNotFound):
        await parts.commands.replay("nope", actor="olga")
    with pytest.raises(DeadLetterNotFound):
        await parts.commands.discard("nope", actor="olga")


async def test_discard_gives_a_record_up_once(parts: Parts) -> None:
    record = await _dead(parts)
    discarded = await parts.commands.discard(record.id, actor="olga")
    assert discarded.status is DeadLetterStatus.DISCARDED
    with pytest.raises(DeadLetterConflict):
        await parts.commands.discard(record.id, actor="olga")


async def test_a_bulk_replay_that_would_take_too_long_is_refused_and_audited(parts: Parts) -> None:
    record = await _dead(parts)
    with pytest.raises(BulkReplayRefused, match=r"could take 100s; keep limit / rate within 60s"):
        await parts.commands.replay_many(DeadLetterFilter(), actor="olga", limit=100, dry_run=False, rate=1.0)
    audit = (await parts.store.list_audit(limit=10)).items
    assert [(a.action, a.outcome.startswith("refused")) for a in audit] == [("bulk_replay", True)]
    assert audit[0].details == {"limit": 100, "rate": 1.0}
    # a dry run only lists, so it may name any limit; the default rate is the service's
    listed = await parts.commands.replay_many(
        DeadLetterFilter(), actor="olga", limit=1000, dry_run=True, rate=None
    )
    assert listed.matched == [record.id] and listed.replayed == []
    done = await parts.commands.replay_many(
        DeadLetterFilter(), actor="olga", limit=10, dry_run=False, rate=None
    )
    assert done.replayed == [record.id]
