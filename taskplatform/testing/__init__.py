"""Run task types in unit tests without a broker or a store.

``run_task(greet, {"name": "Ada"})`` validates the parameters and the result as the worker
does and returns the result; pass ``ctx=FakeTaskContext(...)`` to set the attempt, cancel, or
inspect the progress, sub-tasks and logs the task produced afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from taskplatform.tasks.decorator import TaskFunction, executable_of
from taskplatform.tasks.executable import BackgroundTaskExecutable
from taskplatform.testing.context import FakeTaskContext, LogEntry, SubTask

__all__ = ["FakeTaskContext", "LogEntry", "SubTask", "run_task"]

R = TypeVar("R", bound=BaseModel)


@overload
async def run_task(
    executable: TaskFunction[Any, R],
    params: BaseModel | Mapping[str, Any],
    *,
    ctx: FakeTaskContext[Any] | None = None,
) -> R: ...
@overload
async def run_task(
    executable: type[BackgroundTaskExecutable[Any, R]],
    params: BaseModel | Mapping[str, Any],
    *,
    ctx: FakeTaskContext[Any] | None = None,
) -> R: ...
async def run_task(
    executable: object,
    params: BaseModel | Mapping[str, Any],
    *,
    ctx: FakeTaskContext[Any] | None = None,
) -> Any:
    """Run one attempt of ``executable`` (a class or a ``@task`` function) and return its result.

    As in the worker: the parameters go through JSON and the executable's ``Params`` (so a
    model that would not survive the store fails here), the attempt runs under the
    executable's ``timeout`` (``TimeoutError`` when exceeded), the result is validated as its
    ``Result`` and must serialise to JSON. Exceptions the task raises propagate. ``ctx`` gets
    the validated parameters, the task type and the progress model of the executable.
    """
    cls = executable_of(executable)
    if cls is None:
        raise TypeError(f"{executable!r} is not a BackgroundTaskExecutable subclass or a @task function")
    cls.validate_definition()
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else dict(params)
    parameters = cls.Params.model_validate(data)
    if ctx is None:
        ctx = FakeTaskContext(parameters)
    ctx.parameters = parameters
    ctx.task_type = cls.task_type
    ctx.progress_model = cls.ProgressModel
    async with asyncio.timeout(cls.timeout):
        result = await cls().execute(ctx)
    if not isinstance(result, cls.Result):
        result = cls.Result.model_validate(result)
    result.model_dump(mode="json")  # raises when the result would not serialise for the store
    return result
