"""Executables used by the tests. Calls are counted per task id, in this process."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import ClassVar

from pydantic import BaseModel

from executors.base import BackgroundTaskExecutable, TaskContext


class NoopParams(BaseModel):
    value: int = 0
    sleep: float = 0.0


class NoopResult(BaseModel):
    value: int


class Noop(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Returns its input, optionally after sleeping; counts every execution."""

    task_type = "test_noop"
    Params = NoopParams
    Result = NoopResult
    calls: ClassVar[Counter[str]] = Counter()

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        type(self).calls[ctx.task_id] += 1
        if ctx.parameters.sleep:
            await asyncio.sleep(ctx.parameters.sleep)
        return NoopResult(value=ctx.parameters.value)


class Boom(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Always raises."""

    task_type = "test_boom"
    Params = NoopParams
    Result = NoopResult

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        raise ValueError(f"boom {ctx.parameters.value}")


EXECUTABLES = [Noop, Boom]
