"""taskplatform.testing: the fake context records like the worker's context behaves; run_task
validates like the worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from taskplatform import Executable, Progress, TaskContext, task
from taskplatform.errors import Cancelled
from taskplatform.testing import FakeTaskContext, LogEntry, SubTask, run_task
from taskplatform.worker.context import child_task_id
from tests.support.executables import Noop, NoopParams, NoopResult


class Square(BaseModel):
    n: int


class Squared(BaseModel):
    value: int


class Steps(Progress):
    step: int


@task("square", progress_model=Steps)
async def square(ctx: TaskContext[Square], params: Square) -> Squared:
    await ctx.update_progress({"step": 1, "percent": 50})
    ctx.log_info("squared", n=params.n)
    return Squared(value=params.n * params.n)


@task("square_loosely")
async def square_loosely(ctx: TaskContext[Square], params: Square) -> Squared:
    return {"value": str(params.n * params.n)}  # type: ignore[return-value]  # validated as Squared


@task("square_wrongly")
async def square_wrongly(ctx: TaskContext[Square], params: Square) -> Squared:
    return {"wrong": 1}  # type: ignore[return-value]


class Opaque(BaseModel):
    thing: Any


@task("opaque")
async def opaque(ctx: TaskContext[Square], params: Square) -> Opaque:
    return Opaque(thing=object())


@task("slow", timeout=0.05)
async def slow(ctx: TaskContext[Square], params: Square) -> Squared:
    await asyncio.sleep(5)
    return Squared(value=0)


# ------------------------------------------------------------ run_task
async def test_run_task_validates_a_dict_and_returns_the_typed_result() -> None:
    assert await run_task(square, {"n": 7}) == Squared(value=49)


async def test_run_task_runs_a_class_executable_too() -> None:
    assert await run_task(Noop, NoopParams(value=3)) == NoopResult(value=3)


async def test_run_task_refuses_invalid_parameters_as_the_worker_would() -> None:
    with pytest.raises(ValidationError, match="n\n  Input should be a valid integer"):
        await run_task(square, {"n": "seven"})
    with pytest.raises(ValidationError, match="n\n  Field required"):
        await run_task(square, Squared(value=1))  # a model of another type goes through JSON


async def test_run_task_validates_what_the_task_returns() -> None:
    assert await run_task(square_loosely, {"n": 3}) == Squared(value=9)
    with pytest.raises(ValidationError, match="value\n  Field required"):
        await run_task(square_wrongly, {"n": 3})


async def test_run_task_refuses_a_result_that_does_not_serialise() -> None:
    with pytest.raises(PydanticSerializationError):
        await run_task(opaque, {"n": 1})


async def test_run_task_applies_the_executables_timeout() -> None:
    with pytest.raises(TimeoutError):
        await run_task(slow, {"n": 1})


async def test_run_task_fills_the_given_context_and_leaves_its_records_to_inspect() -> None:
    ctx = FakeTaskContext(None, attempt=2, user_id="u-1")

    await run_task(square, {"n": 2}, ctx=ctx)

    assert (ctx.parameters, ctx.task_type, ctx.attempt, ctx.user_id) == (Square(n=2), "square", 2, "u-1")
    assert ctx.progress == [Steps(step=1, percent=50)]
    assert ctx.logs == [LogEntry("info", "squared", {"n": 2})]


async def test_run_task_refuses_what_is_not_an_executable() -> None:
    class Incomplete(Executable[Square, Squared]):
        task_type = "Not Valid"

        async def execute(self, ctx: TaskContext[Square]) -> Squared:
            return Squared(value=0)

    with pytest.raises(TypeError, match="is not a BackgroundTaskExecutable subclass or a @task function"):
        await run_task(len, {})
    with pytest.raises(TypeError, match="task_type must match"):
        await run_task(Incomplete, {"n": 1})


# ------------------------------------------------------------ FakeTaskContext
async def test_progress_is_validated_against_the_progress_model() -> None:
    ctx = FakeTaskContext(None, progress_model=Steps)

    await ctx.update_progress(Steps(step=1))
    with pytest.raises(ValidationError, match="step\n  Field required"):
        await ctx.update_progress(Progress(percent=10))  # a plain Progress is validated as Steps
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        await ctx.update_progress({"step": 2, "percent": 101})

    assert ctx.progress == [Steps(step=1)]


async def test_sub_tasks_get_sequence_keys_or_the_given_ones_and_stable_ids() -> None:
    ctx = FakeTaskContext(None, task_id="parent")

    first = await ctx.submit_sub_task("child", {"a": 1})
    batch = await ctx.submit_sub_tasks("child", [Square(n=1), Square(n=2)])
    keyed = await ctx.submit_sub_task("other", {"b": 2}, key="mine")

    assert [c.key for c in ctx.sub_tasks] == ["#0", "#1", "#2", "mine"]
    assert [first, *batch, keyed] == [child_task_id("parent", k) for k in ["#0", "#1", "#2", "mine"]]
    assert ctx.sub_tasks[3] == SubTask("other", {"b": 2}, "mine", ctx.sub_task_id("mine"))
    assert [len(call) for call in ctx.submit_calls] == [1, 2, 1]
    again = FakeTaskContext(None, task_id="parent", attempt=1)
    assert await again.submit_sub_task("child", {"a": 1}) == first  # a retried parent: same child


async def test_keys_must_match_the_parameters() -> None:
    ctx = FakeTaskContext(None)
    with pytest.raises(ValueError, match="1 keys given for 2 sub-tasks"):
        await ctx.submit_sub_tasks("child", [{}, {}], keys=["k"])
    assert ctx.submit_calls == []


async def test_a_cancelled_context_refuses_sub_tasks() -> None:
    ctx = FakeTaskContext(None, cancelled=True)
    with pytest.raises(Cancelled, match="no more sub-tasks"):
        await ctx.submit_sub_task("child", {})


async def test_cancellation_can_follow_progress_or_submissions() -> None:
    by_progress = FakeTaskContext(None, cancel_after_progress=2)
    await by_progress.update_progress({"percent": 1})
    assert not by_progress.cancelled
    await by_progress.update_progress({"percent": 2})
    assert by_progress.cancelled

    by_submits = FakeTaskContext(None, cancel_after_submits=1)
    await by_submits.submit_sub_task("child", {})
    assert by_submits.cancelled


def test_logs_keep_level_message_and_fields() -> None:
    ctx = FakeTaskContext(None)
    ctx.log_info("started", step=1)
    ctx.log_error("failed")

    assert ctx.logs == [LogEntry("info", "started", {"step": 1}), LogEntry("error", "failed", {})]
    assert ctx.messages == ["started", "failed"]
