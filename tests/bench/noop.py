"""The executable the benchmarks push through the pipeline: does nothing, returns at once."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext


class BenchParams(BaseModel):
    n: int = 0
    #: Seconds of simulated work (an awaited sleep: it holds a slot, not the CPU).
    sleep: float = 0.0


class BenchResult(BaseModel):
    n: int


class BenchNoop(BackgroundTaskExecutable[BenchParams, BenchResult]):
    task_type = "bench_noop"
    Params = BenchParams
    Result = BenchResult

    async def execute(self, ctx: TaskContext[BenchParams]) -> BenchResult:
        if ctx.parameters.sleep:
            await asyncio.sleep(ctx.parameters.sleep)
        return BenchResult(n=ctx.parameters.n)


EXECUTABLES = [BenchNoop]
