"""The attempt runner: an attempt under its timeout, its lease renewed, a cancel request honoured,
and its parameters and result checked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from taskplatform.errors import Cancelled, PermanentFailure
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask, utcnow
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.worker.attempt import AttemptRunner
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.outcomes import Failed, Succeeded
from tests.unit.worker.conftest import NODE, Broken, Echo, Params, Polite, Result, Sleepy

NewTask = Callable[..., Awaitable[BackgroundTask]]


def _runner(store: Any, bus: EventBus, config: WorkerConfig) -> AttemptRunner:
    return AttemptRunner(store, config, bus=bus)


async def test_a_successful_attempt_returns_its_result(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_echo", value=5)
    outcome, children, _progress = await _runner(store, bus, config).run_claimed(task, Echo(), utcnow())
    assert outcome == Succeeded(Result(value=5)) and children == 0
    assert Echo.runs == [task.id]


async def test_a_failing_attempt_returns_its_error_with_the_traceback(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_broken")
    outcome, _, _ = await _runner(store, bus, config).run_claimed(task, Broken(), utcnow())
    assert isinstance(outcome, Failed) and isinstance(outcome.error, PermanentFailure)
    assert "in execute" in outcome.traceback


async def test_an_attempt_past_its_timeout_is_stopped_and_fails_with_a_timeout(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_sleepy")
    started = asyncio.get_running_loop().time()
    outcome, _, _ = await _runner(store, bus, config).run_claimed(task, Sleepy(), utcnow())
    assert isinstance(outcome, Failed) and isinstance(outcome.error, TimeoutError)
    assert asyncio.get_running_loop().time() - started < 2  # its own 0.1 s, not the default 5 s


async def test_a_cancel_request_while_running_stops_the_attempt_as_cancelled(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_polite")
    running = asyncio.create_task(_runner(store, bus, config).run_claimed(task, Polite(), utcnow()))
    await asyncio.sleep(0.05)
    assert not running.done()
    await store.request_cancel(task.id)
    outcome, _, _ = await asyncio.wait_for(running, 2)
    assert isinstance(outcome, Failed) and isinstance(outcome.error, Cancelled)


async def test_an_attempt_that_ignores_a_cancel_request_is_cancelled_after_the_grace(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    class Deaf(BackgroundTaskExecutable[Params, Result]):
        task_type = "unit_deaf"

        async def execute(self, ctx: TaskContext[Params]) -> Result:
            await asyncio.sleep(30)
            return Result(value=0)

    task = await claimed("unit_echo")
    running = asyncio.create_task(_runner(store, bus, config).run_claimed(task, Deaf(), utcnow()))
    await asyncio.sleep(0.05)
    await store.request_cancel(task.id)
    outcome, _, _ = await asyncio.wait_for(running, 2)  # the grace is 0.2 s
    assert isinstance(outcome, Failed) and isinstance(outcome.error, Cancelled)


async def test_a_running_attempt_renews_its_lease(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_echo", sleep=0.4)
    short = replace(config, lease_seconds=0.3)  # renewed every 0.1 s
    before = (await store.get(task.id)).lease_until
    outcome, _, _ = await _runner(store, bus, short).run_claimed(task, Echo(), utcnow())
    assert isinstance(outcome, Succeeded)
    assert store.calls.count("renew_lease") >= 2
    assert (await store.get(task.id)).lease_until != before


async def test_an_attempt_whose_lease_was_taken_over_is_asked_to_stop(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_polite")
    short = replace(config, lease_seconds=0.15)
    running = asyncio.create_task(_runner(store, bus, short).run_claimed(task, Polite(), utcnow()))
    await asyncio.sleep(0.02)
    # Another worker takes the attempt over (as after our lease lapsed unseen).
    await store.record_cancelled(task.id, attempt=0, node_id=NODE)
    outcome, _, _ = await asyncio.wait_for(running, 2)
    assert isinstance(outcome, Failed) and isinstance(outcome.error, Cancelled)


async def test_parameters_that_do_not_validate_fail_the_attempt_without_running_it(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    task = await claimed("unit_echo", value="not a number")
    outcome, _, _ = await _runner(store, bus, config).run_claimed(task, Echo(), utcnow())
    assert isinstance(outcome, Failed) and isinstance(outcome.error, ValidationError)
    assert Echo.runs == []


async def test_a_result_no_store_can_keep_fails_the_attempt_for_good(
    store: Any, bus: EventBus, config: WorkerConfig, claimed: NewTask
) -> None:
    class Huge(BackgroundTaskExecutable[Params, Result]):
        task_type = "unit_huge"

        async def execute(self, ctx: TaskContext[Params]) -> Result:
            return Result(value=2**70)  # beyond 64 bits

    task = await claimed("unit_echo")
    outcome, _, _ = await _runner(store, bus, config).run_claimed(task, Huge(), utcnow())
    assert isinstance(outcome, Failed) and isinstance(outcome.error, PermanentFailure)
    assert "cannot be stored" in str(outcome.error)
