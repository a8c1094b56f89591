"""The dead-letter service over the in-memory store, the real event bus and state aggregator:
what a replay (one, or many by filter) and a discard change, every refusal and its reason, and
the audit entry each leaves, refusals included. No broker: publishing is recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from taskplatform.deadletters.service import (
    MAX_BULK,
    DeadLetterConflict,
    DeadLetterNotFound,
    DeadLetterService,
)
from taskplatform.errors import UnknownTaskTypeError
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.models import AuditEntry, BackgroundTask, DeadLetterStatus, TaskStatus
from taskplatform.store.deadletters import DeadLetterFilter, DeadLetterPage
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from tests.store.helpers import make_dead_letter

ACTOR = "ops@example"


class Params(BaseModel):
    value: int


class Result(BaseModel):
    value: int


class Doubler(BackgroundTaskExecutable[Params, Result]):
    task_type = "unit_doubler"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        return Result(value=2 * ctx.parameters.value)


class PagingStore(MemoryTaskStore):
    """The in-memory store answering dead-letter lists in pages of at most ``page`` records (as
    a server may), and refusing the replay of tasks in ``refuse_replay`` (another operator won)."""

    def __init__(self) -> None:
        super().__init__()
        self.page: int | None = None
        self.refuse_replay: set[str] = set()

    async def list_dead_letters(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> DeadLetterPage:
        return await super().list_dead_letters(filters, limit=min(limit, self.page or limit), cursor=cursor)

    async def replay_task(
        self,
        task_id: str,
        *,
        expected_replays: int,
        parameters: Any = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        if task_id in self.refuse_replay:
            return None
        return await super().replay_task(
            task_id, expected_replays=expected_replays, parameters=parameters, event_id=event_id
        )


class RecordingSubmitter:
    """What the service needs of the submitter: publish tasks already stored."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish_stored(self, tasks: Sequence[BackgroundTask], *, owner: str | None = None) -> list[Any]:
        self.published.extend(t.id for t in tasks)
        return []


@dataclass
class Parts:
    store: PagingStore
    submitter: RecordingSubmitter
    service: DeadLetterService

    async def audit(self) -> list[AuditEntry]:
        return list(reversed((await self.store.list_audit(limit=100)).items))  # oldest first

    async def dead(self, task_type: str = Doubler.task_type, **fields: Any) -> BackgroundTask:
        """A DEAD_LETTER task and its pending dead letter."""
        task = BackgroundTask(
            task_type=task_type, status=TaskStatus.DEAD_LETTER, parameters={"value": 1}, **fields
        )
        await self.store.create(task)
        record = make_dead_letter(task_id=task.id, task_type=task_type, generation=task.replays)
        await self.store.upsert_dead_letter(record)
        return task


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    store = PagingStore()
    await store.open()
    bus = EventBus()
    StateAggregator(store, bus, node_id="api-1").attach()
    bus.start()
    submitter = RecordingSubmitter()
    service = DeadLetterService(
        store,
        ExecutableRegistry([Doubler]),
        bus,
        submitter,  # type: ignore[arg-type]
        node_id="api-1",
        default_rate=1000.0,
    )
    try:
        yield Parts(store, submitter, service)
    finally:
        await bus.close()
        await store.close()


# ---------------------------------------------------------------- one replay


async def test_a_replay_queues_the_task_again_marks_the_record_and_is_audited(parts: Parts) -> None:
    task = await parts.dead()

    replayed = await parts.service.replay(task.id, actor=ACTOR)

    assert replayed.task.status is TaskStatus.QUEUED and replayed.task.replays == 1
    assert replayed.record.status is DeadLetterStatus.REPLAYED
    assert parts.submitter.published == [task.id]
    [entry] = await parts.audit()
    assert (entry.action, entry.outcome, entry.actor) == ("replay", "ok", ACTOR)
    assert entry.details == {"task_id": task.id, "generation": 1} and not entry.parameters_overridden


async def test_a_replay_with_valid_parameters_replaces_the_tasks_own(parts: Parts) -> None:
    task = await parts.dead()

    replayed = await parts.service.replay(task.id, actor=ACTOR, parameters={"value": "7"})

    assert replayed.task.parameters == {"value": 7}  # validated and dumped as the task type's Params
    [entry] = await parts.audit()
    assert entry.outcome == "ok" and entry.parameters_overridden


async def test_a_replay_with_invalid_parameters_changes_nothing_and_audits_what_was_wrong(
    parts: Parts,
) -> None:
    task = await parts.dead()

    with pytest.raises(ValidationError):
        await parts.service.replay(task.id, actor=ACTOR, parameters={"value": "seven"})

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER and got.replays == 0
    [entry] = await parts.audit()
    assert entry.outcome.startswith("refused: invalid parameters: parameters.value: ")
    assert entry.parameters_overridden and parts.submitter.published == []


async def test_replacement_parameters_for_a_task_type_not_registered_are_refused(parts: Parts) -> None:
    task = await parts.dead(task_type="gone_type")

    with pytest.raises(UnknownTaskTypeError):
        await parts.service.replay(task.id, actor=ACTOR, parameters={"value": 1})

    [entry] = await parts.audit()
    assert entry.outcome.startswith("refused: invalid parameters: ") and "gone_type" in entry.outcome


async def test_a_replay_of_an_unknown_record_is_refused_and_audited(parts: Parts) -> None:
    with pytest.raises(DeadLetterNotFound):
        await parts.service.replay("no-such-record", actor=ACTOR)
    [entry] = await parts.audit()
    assert entry.dead_letter_ids == ["no-such-record"] and entry.outcome.startswith("refused: ")


async def test_a_record_replayed_already_is_not_replayed_again(parts: Parts) -> None:
    task = await parts.dead()
    await parts.service.replay(task.id, actor=ACTOR)

    with pytest.raises(DeadLetterConflict, match="was replayed already"):
        await parts.service.replay(task.id, actor=ACTOR)
    assert parts.submitter.published == [task.id]


async def test_a_record_naming_no_task_has_nothing_to_replay(parts: Parts) -> None:
    record = make_dead_letter(id="msg-1", kind="message")
    await parts.store.upsert_dead_letter(record.model_copy(update={"task_id": None}))

    with pytest.raises(DeadLetterConflict, match="names no task"):
        await parts.service.replay("msg-1", actor=ACTOR)


async def test_a_record_whose_task_was_deleted_has_nothing_to_replay(parts: Parts) -> None:
    await parts.store.upsert_dead_letter(make_dead_letter(task_id="deleted-task"))

    with pytest.raises(DeadLetterConflict, match="no longer exists"):
        await parts.service.replay("deleted-task", actor=ACTOR)


async def test_a_message_level_record_of_a_live_task_changes_nothing(parts: Parts) -> None:
    task = BackgroundTask(task_type=Doubler.task_type, parameters={"value": 1})  # QUEUED, alive
    await parts.store.create(task)
    await parts.store.upsert_dead_letter(make_dead_letter(id="msg-2", kind="message", task_id=task.id))

    with pytest.raises(DeadLetterConflict, match="message-level dead letter"):
        await parts.service.replay("msg-2", actor=ACTOR)

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.QUEUED and got.replays == 0


async def test_the_record_of_a_task_that_is_not_dead_is_not_replayed(parts: Parts) -> None:
    task = BackgroundTask(task_type=Doubler.task_type, status=TaskStatus.COMPLETED, parameters={"value": 1})
    await parts.store.create(task)
    await parts.store.upsert_dead_letter(make_dead_letter(task_id=task.id))

    with pytest.raises(DeadLetterConflict, match="only a dead task can be replayed"):
        await parts.service.replay(task.id, actor=ACTOR)


async def test_the_record_of_an_earlier_generation_is_not_replayed(parts: Parts) -> None:
    task = await parts.dead(replays=2)
    await parts.store.upsert_dead_letter(make_dead_letter(id="old", task_id=task.id, generation=1))
    stale = await parts.store.get_dead_letter("old")
    assert stale is not None

    with pytest.raises(DeadLetterConflict, match="belongs to generation 1"):
        await parts.service.replay("old", actor=ACTOR)


async def test_a_task_changed_while_being_replayed_is_left_to_the_other_change(parts: Parts) -> None:
    task = await parts.dead()
    parts.store.refuse_replay = {task.id}

    with pytest.raises(DeadLetterConflict, match="changed while it was being replayed"):
        await parts.service.replay(task.id, actor=ACTOR)

    record = await parts.store.get_dead_letter(task.id)
    assert record is not None and record.status is DeadLetterStatus.PENDING
    assert parts.submitter.published == []


# ---------------------------------------------------------------- bulk replay


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"limit": 0}, "limit must be between 1 and"),
        ({"limit": MAX_BULK + 1}, "limit must be between 1 and"),
        ({"rate": 0.0}, "rate must be positive"),
    ],
    ids=["limit-0", "limit-too-big", "rate-0"],
)
async def test_a_bulk_replay_with_a_bad_limit_or_rate_is_refused_and_audited(
    parts: Parts, options: dict[str, Any], problem: str
) -> None:
    await parts.dead()
    with pytest.raises(ValueError, match=problem):
        await parts.service.replay_many(DeadLetterFilter(), actor=ACTOR, **options)
    [entry] = await parts.audit()
    assert entry.action == "bulk_replay" and entry.outcome.startswith(f"refused: {problem}")
    assert parts.submitter.published == []


async def test_a_dry_run_lists_what_would_be_replayed_and_changes_nothing(parts: Parts) -> None:
    tasks = [await parts.dead() for _ in range(2)]

    result = await parts.service.replay_many(DeadLetterFilter(), actor=ACTOR, dry_run=True)

    assert sorted(result.matched) == sorted(t.id for t in tasks) and result.replayed == []
    assert parts.submitter.published == []
    [entry] = await parts.audit()
    assert entry.outcome == "dry run" and entry.dry_run


async def test_a_bulk_replay_follows_the_list_across_pages_up_to_its_limit(parts: Parts) -> None:
    tasks = [await parts.dead() for _ in range(5)]
    parts.store.page = 2  # the store answers two records at a time

    result = await parts.service.replay_many(DeadLetterFilter(), actor=ACTOR, limit=4)

    assert len(result.matched) == 4 and sorted(result.replayed) == sorted(result.matched)
    assert set(result.matched) < {t.id for t in tasks}
    [entry] = await parts.audit()
    assert entry.outcome == "ok" and entry.details["replayed"] == 4


async def test_a_bulk_replay_that_cannot_replay_some_reports_them_as_partial(parts: Parts) -> None:
    good = await parts.dead()
    stuck = await parts.dead()
    parts.store.refuse_replay = {stuck.id}

    result = await parts.service.replay_many(DeadLetterFilter(), actor=ACTOR)

    assert result.replayed == [good.id] and list(result.failed) == [stuck.id]
    assert "changed while it was being replayed" in result.failed[stuck.id]
    [entry] = await parts.audit()
    assert entry.outcome == "partial" and entry.details["failed"] == result.failed


async def test_a_bulk_replay_that_replays_none_of_them_failed(parts: Parts) -> None:
    stuck = await parts.dead()
    parts.store.refuse_replay = {stuck.id}

    result = await parts.service.replay_many(DeadLetterFilter(), actor=ACTOR)

    assert result.replayed == [] and list(result.failed) == [stuck.id]
    [entry] = await parts.audit()
    assert entry.outcome == "failed"


# ---------------------------------------------------------------- discard


async def test_a_discard_gives_the_record_up_once_and_refuses_the_second(parts: Parts) -> None:
    task = await parts.dead()

    discarded = await parts.service.discard(task.id, actor=ACTOR)
    assert discarded.status is DeadLetterStatus.DISCARDED

    with pytest.raises(DeadLetterConflict, match="was discarded already"):
        await parts.service.discard(task.id, actor=ACTOR)

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER  # the task stays dead
    assert [e.outcome for e in await parts.audit()] == ["ok", "refused: it was discarded"]
    assert [e.task_ids for e in await parts.audit()] == [[task.id], [task.id]]  # found by its task too


async def test_a_discard_of_an_unknown_record_is_not_found(parts: Parts) -> None:
    with pytest.raises(DeadLetterNotFound):
        await parts.service.discard("no-such-record", actor=ACTOR)
