"""The reaper over the in-memory store, the real event bus and state aggregator: which lapsed
attempts it settles and how (retry, dead letter, under whose retry policy), what it leaves
(live leases, a worker that renewed meanwhile), its quiet spell after a store outage, the
roll-up sweep, and retention with its bounded batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from pydantic import BaseModel

from taskplatform import reaper as reaper_module
from taskplatform.errors import StoreError
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.events.models import TaskSubmitted, TaskWaiting
from taskplatform.models import (
    AuditEntry,
    BackgroundTask,
    DeadLetter,
    ErrorInfo,
    OutboxStatus,
    TaskStatus,
    utcnow,
)
from taskplatform.models.worker import WorkerState
from taskplatform.reaper import Reaper
from taskplatform.retry import RetryPolicy
from taskplatform.store.deadletters import UpsertOutcome
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.presence import FleetSweep
from tests.support.workers import beat_at_age

WORKER = "worker-gone"
REAPER = "reaper-1"
DEFAULT_POLICY = RetryPolicy(max_attempts=3, initial_delay=5.0, jitter=0.0)


class Params(BaseModel):
    pass


class Result(BaseModel):
    pass


class OneShot(BackgroundTaskExecutable[Params, Result]):
    """A task type whose own policy allows a single attempt."""

    task_type = "unit_one_shot"
    retry_policy = RetryPolicy(max_attempts=1)

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        return Result()


class Plain(BackgroundTaskExecutable[Params, Result]):
    """A task type without a policy of its own (the default applies)."""

    task_type = "unit_plain"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        return Result()


class OnceOnly(BackgroundTaskExecutable[Params, Result]):
    """A task type that must never start an attempt twice."""

    task_type = "unit_once_only"
    at_most_once = True

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        return Result()


class FaultyStore(MemoryTaskStore):
    """The in-memory store with faults the reaper must survive: ``after_list`` runs once the
    lapsed tasks are listed (a worker renewing meanwhile), ``refuse_mark`` makes the DEAD_LETTER
    mark a no-op, ``refuse_record`` makes the dead-letter record fail; calls are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.after_list: Callable[[list[BackgroundTask]], object] | None = None
        self.refuse_mark = False
        self.refuse_record = False
        self.purge_calls: list[int] = []
        self.prunes = 0

    async def list_lapsed(self, *, before: datetime, limit: int) -> list[BackgroundTask]:
        tasks = await super().list_lapsed(before=before, limit=limit)
        if self.after_list is not None and tasks:
            result = self.after_list(tasks)
            if asyncio.iscoroutine(result):
                await result
        return tasks

    async def mark_dead_letter(
        self,
        task_id: str,
        *,
        error: ErrorInfo | None,
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        if self.refuse_mark:
            return None
        return await super().mark_dead_letter(task_id, error=error, attempt=attempt, event_id=event_id)

    async def upsert_dead_letter(self, record: DeadLetter) -> tuple[DeadLetter, UpsertOutcome]:
        if self.refuse_record:
            raise StoreError("store operation failed: value refused (injected)")
        return await super().upsert_dead_letter(record)

    async def purge_finished(self, *, before: datetime, limit: int = 1000) -> int:
        n = await super().purge_finished(before=before, limit=limit)
        self.purge_calls.append(n)
        return n

    async def prune_rate_limits(self, *, now: float | None = None) -> int:
        self.prunes += 1
        return await super().prune_rate_limits(now=now)


@dataclass
class Parts:
    store: FaultyStore
    bus: EventBus
    aggregator: StateAggregator

    def reaper(self, **options: object) -> Reaper:
        settings: dict[str, object] = {
            "grace": 0.0,
            "parent_idle_seconds": 3600.0,
            "retention_interval": 3600.0,
        }
        settings.update(options)
        return Reaper(
            self.store,
            ExecutableRegistry([OneShot, Plain, OnceOnly]),
            self.bus,
            self.aggregator,
            default_policy=DEFAULT_POLICY,
            node_id=REAPER,
            **settings,  # type: ignore[arg-type]
        )


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    store = FaultyStore()
    await store.open()
    bus = EventBus()
    aggregator = StateAggregator(store, bus, node_id=REAPER)
    aggregator.attach()
    bus.start()
    try:
        yield Parts(store, bus, aggregator)
    finally:
        await bus.close()
        await store.close()


async def _lapsed(
    store: MemoryTaskStore, task_type: str = "unit_plain", *, attempt: int = 0
) -> BackgroundTask:
    """A task whose worker claimed ``attempt`` and vanished: its lease ended a minute ago."""
    task = BackgroundTask(task_type=task_type, retry_count=attempt)
    await store.create(task)
    running = await store.try_set_running(
        task.id, attempt=attempt, node_id=WORKER, lease_until=store.now() - timedelta(seconds=60)
    )
    assert running is not None
    return running


async def test_a_lapsed_attempt_with_attempts_left_is_retried_as_a_lost_worker(parts: Parts) -> None:
    task = await _lapsed(parts.store)
    reaper = parts.reaper()

    assert await reaper.run_once() == 1

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.RETRYING and got.retry_count == 1
    assert got.error_info is not None and got.error_info.type == "WorkerLost"
    assert got.error_info.reason == "lease-expired" and got.error_info.node_id == REAPER
    assert got.next_attempt_at is not None and got.next_attempt_at > utcnow()  # the policy's 5 s delay
    assert got.outbox.status is OutboxStatus.PENDING  # the relay publishes the next attempt
    assert reaper.reaped == 1
    assert await parts.store.get_dead_letter(task.id) is None


async def test_a_lapsed_last_attempt_is_dead_lettered_with_a_record(parts: Parts) -> None:
    task = await _lapsed(parts.store, attempt=DEFAULT_POLICY.max_attempts - 1)

    assert await parts.reaper().run_once() == 1

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER
    assert got.error_info is not None and got.error_info.reason == "attempts-exhausted"
    record = await parts.store.get_dead_letter(task.id)
    assert record is not None and record.reason == "attempts-exhausted" and record.error_type == "WorkerLost"
    assert record.attempt == DEFAULT_POLICY.max_attempts - 1


async def test_the_task_types_own_policy_decides_over_the_default(parts: Parts) -> None:
    one_shot = await _lapsed(parts.store, OneShot.task_type)  # its policy: one attempt only
    plain = await _lapsed(parts.store, Plain.task_type)  # no policy of its own: the default's three
    unknown = await _lapsed(parts.store, "not_registered_here")  # not in the registry: the default

    assert await parts.reaper().run_once() == 3

    statuses = {t.id: (await parts.store.get(t.id)).status for t in (one_shot, plain, unknown)}  # type: ignore[union-attr]
    assert statuses == {
        one_shot.id: TaskStatus.DEAD_LETTER,
        plain.id: TaskStatus.RETRYING,
        unknown.id: TaskStatus.RETRYING,
    }


async def test_a_lease_within_its_grace_is_left_to_its_worker(parts: Parts) -> None:
    task = await _lapsed(parts.store)  # lapsed a minute ago

    assert await parts.reaper(grace=600.0).run_once() == 0

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.RUNNING


async def test_a_worker_that_renews_after_the_listing_keeps_its_attempt(parts: Parts) -> None:
    retried = await _lapsed(parts.store)
    last = await _lapsed(parts.store, attempt=DEFAULT_POLICY.max_attempts - 1)

    async def renew(tasks: list[BackgroundTask]) -> None:
        for t in tasks:
            lease = parts.store.now() + timedelta(seconds=30)
            assert await parts.store.renew_lease(
                t.id, node_id=WORKER, attempt=t.retry_count, lease_until=lease
            )

    parts.store.after_list = renew
    reaper = parts.reaper()

    assert await reaper.run_once() == 0

    assert reaper.reaped == 0
    for t in (retried, last):
        got = await parts.store.get(t.id)
        assert got is not None and got.status is TaskStatus.RUNNING and got.retry_count == t.retry_count
    assert await parts.store.get_dead_letter(last.id) is None


async def test_a_failed_attempt_the_store_will_not_mark_dead_stays_failed_without_a_record(
    parts: Parts,
) -> None:
    task = await _lapsed(parts.store, attempt=DEFAULT_POLICY.max_attempts - 1)
    parts.store.refuse_mark = True

    assert await parts.reaper().run_once() == 1  # settled: FAILED, the attempt is over

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.FAILED
    assert await parts.store.get_dead_letter(task.id) is None


async def test_a_dead_letter_record_the_store_refuses_is_logged_and_the_task_stays_dead(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    task = await _lapsed(parts.store, attempt=DEFAULT_POLICY.max_attempts - 1)
    parts.store.refuse_record = True

    assert await parts.reaper().run_once() == 1

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER
    assert f"task {task.id} is DEAD_LETTER but its dead-letter record could not be stored" in caplog.text


async def test_after_a_store_outage_the_reaper_stays_quiet_then_reaps_again(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskplatform.reaper")
    task = await _lapsed(parts.store)
    reaper = parts.reaper(quiet_after_outage=0.3)
    parts.store.available = False
    with pytest.raises(StoreError):
        await reaper.run_once()
    parts.store.available = True

    assert await reaper.run_once() == 0  # quiet: the lapsed lease may be a live worker's
    assert "the store was unreachable lately" in caplog.text
    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.RUNNING

    await asyncio.sleep(0.35)
    assert await reaper.run_once() == 1


async def test_the_sweep_finishes_a_parent_whose_last_roll_up_was_lost_once_per_idle_period(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    store, bus = parts.store, parts.bus
    parent = BackgroundTask(task_type="unit_plain")
    kid = BackgroundTask(task_type="unit_plain", parent_task_id=parent.id)
    await store.create_many([parent, kid])
    lease = store.now() + timedelta(seconds=60)
    running_parent = await store.try_set_running(parent.id, attempt=0, node_id=WORKER, lease_until=lease)
    assert running_parent is not None
    await bus.publish(TaskSubmitted(task_id=kid.id, task_type=kid.task_type, parent_task_id=parent.id), kid)
    await bus.publish(
        TaskWaiting(task_id=parent.id, task_type=parent.task_type, node_id=WORKER, children=1), running_parent
    )
    assert await store.try_set_running(kid.id, attempt=0, node_id=WORKER, lease_until=lease) is not None
    # the child completes, but its process dies before the roll-up: written behind the bus
    assert await store.record_completion(kid.id, node_id=WORKER, attempt=0, result={}) is not None
    reaper = parts.reaper(parent_idle_seconds=0.0)

    assert await reaper.run_once() == 0  # no attempt settled; the parent finished by the sweep

    got = await store.get(parent.id)
    assert got is not None and got.status is TaskStatus.COMPLETED
    assert "finished 1 parent(s) whose last roll-up had been lost" in caplog.text


async def test_the_sweep_runs_at_most_once_per_idle_period(parts: Parts) -> None:
    calls: list[float] = []

    async def reconcile(*, idle_for: float, limit: int = 100) -> int:
        calls.append(idle_for)
        return 0

    parts.aggregator.reconcile = reconcile  # type: ignore[method-assign]
    reaper = parts.reaper(parent_idle_seconds=3600.0)
    await reaper.run_once()
    await reaper.run_once()
    assert calls == [3600.0]


async def _finished(store: MemoryTaskStore, n: int, *, ago: float) -> list[BackgroundTask]:
    ended = utcnow() - timedelta(seconds=ago)
    tasks = [
        BackgroundTask(
            task_type="unit_plain",
            status=TaskStatus.COMPLETED,
            created_at=ended,
            updated_at=ended,
            completed_at=ended,
        )
        for _ in range(n)
    ]
    await store.create_many(tasks)
    return tasks


async def test_without_retention_nothing_is_purged(parts: Parts) -> None:
    await _finished(parts.store, 2, ago=10_000)
    reaper = parts.reaper(retention_seconds=None, retention_interval=0.0)

    await reaper.run_once()

    assert await reaper.purge() == 0
    assert parts.store.purge_calls == [] and reaper.purged == 0
    assert parts.store.prunes == 1  # rate-limit keys are pruned either way


async def test_retention_deletes_old_finished_tasks_in_bounded_batches_per_pass(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper_module, "PURGE_BATCH", 2)
    monkeypatch.setattr(reaper_module, "PURGE_BATCHES_PER_PASS", 2)
    old = await _finished(parts.store, 5, ago=10_000)
    recent = await _finished(parts.store, 1, ago=10)
    reaper = parts.reaper(retention_seconds=3600.0)

    assert await reaper.purge() == 4  # two full batches, the pass's bound
    assert await reaper.purge() == 1  # the rest, in a short batch that ends the pass
    assert await reaper.purge() == 0

    assert parts.store.purge_calls == [2, 2, 1, 0]
    assert reaper.purged == 5
    assert all([await parts.store.get(t.id) is None for t in old])
    assert await parts.store.get(recent[0].id) is not None


async def test_audit_retention_deletes_old_entries_in_bounded_batches_per_pass(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper_module, "PURGE_BATCH", 2)
    monkeypatch.setattr(reaper_module, "PURGE_BATCHES_PER_PASS", 2)
    old = [
        AuditEntry(actor="a", action="submit", outcome="ok", at=utcnow() - timedelta(days=100))
        for _ in range(5)
    ]
    recent = AuditEntry(actor="a", action="cancel", outcome="ok", at=utcnow() - timedelta(days=1))
    for entry in (*old, recent):
        await parts.store.add_audit(entry)
    assert await parts.reaper().purge_audit() == 0  # kept for ever unless told
    reaper = parts.reaper(audit_retention_seconds=90 * 86400.0, retention_interval=0.0)
    await reaper.run_once()  # the cleanup pass purges the audit log too
    assert reaper.audit_purged == 4  # two full batches, the pass's bound
    assert await reaper.purge_audit() == 1  # the rest, in a short batch
    assert await reaper.purge_audit() == 0
    assert [e.id for e in (await parts.store.list_audit()).items] == [recent.id]


async def test_retention_runs_once_per_retention_interval(parts: Parts) -> None:
    reaper = parts.reaper(retention_seconds=3600.0, retention_interval=3600.0)
    await reaper.run_once()
    await reaper.run_once()
    assert parts.store.purge_calls == [0] and parts.store.prunes == 1


async def test_the_loop_reaps_until_stopped(parts: Parts) -> None:
    tasks: Sequence[BackgroundTask] = [await _lapsed(parts.store) for _ in range(2)]
    reaper = parts.reaper(interval=0.01)
    stop = asyncio.Event()
    runner = asyncio.create_task(reaper.run(stop))
    try:
        for _ in range(200):
            if reaper.reaped == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=5)
    assert reaper.reaped == 2
    assert all([(await parts.store.get(t.id)).status is TaskStatus.RETRYING for t in tasks])  # type: ignore[union-attr]


async def test_each_pass_marks_silent_workers_offline_and_the_retention_pass_prunes_old_records(
    parts: Parts,
) -> None:
    await beat_at_age(parts.store, "silent", state=WorkerState.ONLINE, age=60)
    await beat_at_age(parts.store, "long-gone", state=WorkerState.STOPPED, age=7200)
    fleet = FleetSweep(parts.store, retention_seconds=3600.0)
    reaper = parts.reaper(fleet=fleet, retention_interval=0.0)

    await reaper.run_once()

    silent = await parts.store.get_worker("silent")
    assert silent is not None and silent.state is WorkerState.OFFLINE
    assert await parts.store.get_worker("long-gone") is None


async def test_after_a_store_outage_the_sweep_waits_too(parts: Parts) -> None:
    """Workers could not beat while the store was away: marking them offline the moment it is
    back would be a false alarm for each."""
    await beat_at_age(parts.store, "silent", state=WorkerState.ONLINE, age=60)
    reaper = parts.reaper(fleet=FleetSweep(parts.store, retention_seconds=None), quiet_after_outage=0.3)
    parts.store.available = False
    with pytest.raises(StoreError):
        await reaper.run_once()
    parts.store.available = True

    await reaper.run_once()
    quiet = await parts.store.get_worker("silent")
    assert quiet is not None and quiet.state is WorkerState.ONLINE

    await asyncio.sleep(0.35)
    await reaper.run_once()
    swept = await parts.store.get_worker("silent")
    assert swept is not None and swept.state is WorkerState.OFFLINE


async def test_a_lost_attempt_of_an_at_most_once_type_is_dead_lettered_not_retried(parts: Parts) -> None:
    task = await _lapsed(parts.store, "unit_once_only")
    assert await parts.reaper().run_once() == 1
    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER  # the default policy had 2 left
    assert got.error_info is not None and "not run again" in got.error_info.message
    record = (await parts.store.list_dead_letters()).items
    assert [r.task_id for r in record] == [task.id] and record[0].reason == "lease-expired"
