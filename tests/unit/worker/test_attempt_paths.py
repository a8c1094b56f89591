"""The attempt runner's less travelled paths: a shutdown cancelling a running attempt, an
executable raising CancelledError itself or returning a plain dict, a last progress no store can
keep, a failing progress flush, and a cancel request seen again while the attempt lingers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest

from taskplatform.events.bus import EventBus
from taskplatform.models import utcnow
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.worker.attempt import AttemptRunner
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.context import ExecutionContext
from taskplatform.worker.outcomes import Failed, Succeeded
from tests.unit.worker.conftest import Broken, Params, Result


class SelfCancelling(BackgroundTaskExecutable[Params, Result]):
    """Raises CancelledError of its own accord (nobody cancelled it)."""

    task_type = "unit_echo"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        raise asyncio.CancelledError("gave up by itself")


class DictResult(BackgroundTaskExecutable[Params, Result]):
    """Returns a plain mapping instead of its Result model."""

    task_type = "unit_echo"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        return {"value": ctx.parameters.value}  # type: ignore[return-value]


class UnstorableProgress(BackgroundTaskExecutable[Params, Result]):
    """Leaves a last progress holding a NUL character pending, then succeeds."""

    task_type = "unit_echo"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        await ctx.update_progress({"message": "half\x00way"})
        await asyncio.sleep(0)  # its throttled write is scheduled, not due for a minute
        return Result(value=1)


class Stubborn(BackgroundTaskExecutable[Params, Result]):
    """Ignores a cancel request and keeps sleeping."""

    task_type = "unit_echo"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        await asyncio.sleep(30)
        return Result(value=0)


async def test_a_shutdown_cancelling_a_running_attempt_propagates_and_stops_the_attempt(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: Any
) -> None:
    task = await claimed("unit_sleepy")
    runner = AttemptRunner(store, replace(config, default_timeout=30.0), bus=bus)
    running = asyncio.create_task(runner.run_claimed(task, Stubborn(), utcnow()))
    await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # all_tasks() lists tasks not done: the attempt was stopped along with its runner.
    assert [t for t in asyncio.all_tasks() if t.get_name() == f"attempt-{task.id}"] == []


async def test_an_executable_raising_cancelled_error_itself_fails_with_that_error(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: Any
) -> None:
    task = await claimed()
    outcome, _, _ = await AttemptRunner(store, config, bus=bus).run_claimed(task, SelfCancelling(), utcnow())
    assert isinstance(outcome, Failed) and isinstance(outcome.error, asyncio.CancelledError)
    assert "gave up by itself" in outcome.traceback


async def test_a_plain_mapping_returned_is_validated_into_the_result_model(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: Any
) -> None:
    task = await claimed(value=7)
    outcome, _, _ = await AttemptRunner(store, config, bus=bus).run_claimed(task, DictResult(), utcnow())
    assert outcome == Succeeded(Result(value=7))


async def test_a_last_progress_no_store_can_keep_is_dropped_and_the_result_kept(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: Any
) -> None:
    task = await claimed()
    runner = AttemptRunner(store, replace(config, progress_interval=60.0), bus=bus)
    outcome, children, progress = await runner.run_claimed(task, UnstorableProgress(), utcnow())
    assert outcome == Succeeded(Result(value=1)) and children == 0
    assert progress is None


async def test_a_progress_flush_that_fails_is_logged_and_the_outcome_kept(
    store: Any,
    bus: EventBus,
    config: WorkerConfig,
    claimed: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_flush(self: Any) -> None:
        raise RuntimeError("flush exploded")

    monkeypatch.setattr(ExecutionContext, "flush_progress", broken_flush)
    task = await claimed("unit_broken")
    with caplog.at_level(logging.WARNING, logger="taskplatform.worker.attempt"):
        outcome, _, progress = await AttemptRunner(store, config, bus=bus).run_claimed(
            task, Broken(), utcnow()
        )
    assert isinstance(outcome, Failed) and progress is None
    [record] = [r for r in caplog.records if r.name == "taskplatform.worker.attempt"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"task {task.id}: last progress not written: flush exploded"


async def test_a_cancel_request_seen_again_while_the_attempt_lingers_is_asked_only_once(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    task = await claimed("unit_sleepy")
    await store.request_cancel(task.id)
    # Renewals every 0.05 s keep reporting the cancel request during the 0.3 s grace.
    runner = AttemptRunner(
        store, replace(config, lease_seconds=0.15, cancel_grace=0.3, default_timeout=30.0), bus=bus
    )
    with caplog.at_level(logging.INFO, logger="taskplatform.worker.attempt"):
        outcome, _, _ = await runner.run_claimed(task, Stubborn(), utcnow())
    assert isinstance(outcome, Failed) and type(outcome.error).__name__ == "Cancelled"
    asks = [r for r in caplog.records if "asking the executable to stop" in r.getMessage()]
    assert len(asks) == 1 and asks[0].levelno == logging.INFO
    assert store.calls.count("renew_lease") >= 2
