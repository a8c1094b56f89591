"""The execution context's less travelled paths: progress writes that fail, are ignored or are
cancelled midway, and sub-task submission refused or misused."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from taskplatform.errors import Cancelled
from taskplatform.models import BackgroundTask
from taskplatform.worker.context import ExecutionContext, child_task_id
from tests.unit.worker.conftest import NODE, Params


class _Delivery:
    def __init__(self, accepted: bool, rejected: str | None = None) -> None:
        self.accepted = accepted
        self.rejected = rejected


class StubBus:
    """Answers a publish as told: raise ``error``, block until released, or accept/reject."""

    def __init__(self, *, error: Exception | None = None, rejected: str | None = None) -> None:
        self.error = error
        self.rejected = rejected
        self.block = False
        self.entered = asyncio.Event()
        self.published: list[Any] = []

    async def publish(self, event: Any, task: BackgroundTask) -> _Delivery:
        self.entered.set()
        if self.block:
            await asyncio.sleep(30)
        if self.error is not None:
            raise self.error
        self.published.append(event)
        return _Delivery(self.rejected is None, self.rejected)


class StubSubmitter:
    """Records the children prepared and submitted."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def prepare(self, request: Any, *, task_id: str, parent_task_id: str) -> Any:
        return (task_id, parent_task_id, request)

    async def submit_children(self, children: list[Any]) -> None:
        self.submitted.extend(children)


def _task() -> BackgroundTask:
    return BackgroundTask(task_type="unit_echo", parameters={}, user_id="alice")


def _ctx(task: BackgroundTask, bus: Any, submitter: Any = None) -> ExecutionContext[Params]:
    return ExecutionContext(task, Params(), bus=bus, submitter=submitter, node_id=NODE, progress_interval=0.0)


async def test_a_progress_write_the_bus_refuses_is_logged_as_a_warning_and_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _task()
    ctx = _ctx(task, StubBus(error=RuntimeError("bus closed")))
    with caplog.at_level(logging.INFO, logger="taskplatform.task"):
        await ctx.update_progress({"percent": 10})
    [record] = [r for r in caplog.records if r.name == "taskplatform.task"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"progress of task {task.id} not recorded: bus closed"
    assert ctx.progress_writes == 0


async def test_a_progress_write_not_accepted_is_logged_at_info_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _task()
    bus = StubBus(rejected="task already settled")
    ctx = _ctx(task, bus)
    with caplog.at_level(logging.INFO, logger="taskplatform.task"):
        await ctx.update_progress({"percent": 20})
    [record] = [r for r in caplog.records if r.name == "taskplatform.task"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"progress of task {task.id} ignored: task already settled"
    assert ctx.progress_writes == 1 and len(bus.published) == 1


async def test_a_progress_write_cancelled_midway_stays_pending_for_flush_progress() -> None:
    bus = StubBus()
    bus.block = True
    ctx = _ctx(_task(), bus)
    writer = asyncio.create_task(ctx.update_progress({"percent": 30}))
    await bus.entered.wait()
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert bus.published == []
    bus.block = False
    await ctx.flush_progress()
    [event] = bus.published
    assert event.progress["percent"] == 30
    assert await ctx.take_pending_progress() is None


async def test_submitting_without_a_submitter_raises_runtime_error() -> None:
    ctx = _ctx(_task(), StubBus())
    with pytest.raises(RuntimeError, match=r"cannot submit sub-tasks \(no submitter\)"):
        await ctx.submit_sub_task("unit_echo", {"value": 1})
    assert ctx.children == 0


async def test_submitting_after_a_cancel_request_raises_cancelled() -> None:
    submitter = StubSubmitter()
    ctx = _ctx(_task(), StubBus(), submitter)
    ctx.request_cancel()
    with pytest.raises(Cancelled, match="no more sub-tasks"):
        await ctx.submit_sub_tasks("unit_echo", [{"value": 1}])
    assert submitter.submitted == [] and ctx.children == 0


async def test_submitting_with_fewer_keys_than_parameters_raises_value_error() -> None:
    submitter = StubSubmitter()
    ctx = _ctx(_task(), StubBus(), submitter)
    with pytest.raises(ValueError, match="1 keys given for 2 sub-tasks"):
        await ctx.submit_sub_tasks("unit_echo", [{"value": 1}, {"value": 2}], keys=["a"])
    assert submitter.submitted == [] and ctx.children == 0


async def test_submit_sub_task_with_a_key_returns_the_stable_child_id() -> None:
    task = _task()
    submitter = StubSubmitter()
    ctx = _ctx(task, StubBus(), submitter)
    child = await ctx.submit_sub_task("unit_echo", Params(value=3), key="first")
    assert child == child_task_id(task.id, "first")
    [(task_id, parent_id, request)] = submitter.submitted
    assert (task_id, parent_id) == (child, task.id)
    assert request.parameters["value"] == 3 and request.user_id == "alice"
    assert ctx.children == 1


async def test_the_context_exposes_the_task_type_and_user_of_its_task() -> None:
    task = _task()
    ctx = _ctx(task, StubBus())
    assert ctx.task_type == "unit_echo"
    assert ctx.user_id == "alice"
    assert ctx.task_id == task.id
