"""Rate-limit benchmark (not a test): prints figures, asserts nothing.

Submits N tasks of a type limited to R starts a second (the store backend: one bucket shared by
every worker) to 1, then 2 worker *processes*, and reports the rate they started at against
the limit, how long deliveries were held in a worker before their attempt started (the bound
is ``RATE_LIMIT_HOLD_SECONDS``, 1 s), and whether any attempt was counted twice. Each phase
first runs unlimited warm-up tasks on every worker, so store connections are open.

    .venv/bin/python -m tests.bench.bench_ratelimit --store postgresql
    .venv/bin/python -m tests.bench.bench_ratelimit --store postgresql --type bench_paced_200 --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections import Counter
from typing import Any, ClassVar

from pydantic import BaseModel

from taskplatform.models import BackgroundTask, utcnow
from taskplatform.models.status import TERMINAL
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import bench_platform, pct, start_workers, stop_workers


class PacedParams(BaseModel):
    n: int = 0


class PacedResult(BaseModel):
    started: float
    held: float


class BenchPaced20(BackgroundTaskExecutable[PacedParams, PacedResult]):
    """Does nothing, at most 20 times a second; reports when it started and how long its
    delivery was held first."""

    task_type = "bench_paced_20"
    Params = PacedParams
    Result = PacedResult
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit("20/s"),)

    async def execute(self, ctx: TaskContext[PacedParams]) -> PacedResult:
        now = utcnow()
        return PacedResult(started=now.timestamp(), held=(now - ctx.received_at).total_seconds())


class BenchPaced200(BenchPaced20):
    """The same at 200 a second."""

    task_type = "bench_paced_200"
    rate_limits = (RateLimit("200/s"),)


class BenchWarm(BackgroundTaskExecutable[PacedParams, PacedParams]):
    """Unlimited: warms each worker up before a phase."""

    task_type = "bench_warm"
    Params = PacedParams
    Result = PacedParams

    async def execute(self, ctx: TaskContext[PacedParams]) -> PacedParams:
        return ctx.parameters


EXECUTABLES: list[type[BackgroundTaskExecutable[Any, Any]]] = [BenchPaced20, BenchPaced200, BenchWarm]


async def submit(runtime: Runtime, task_type: str, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        batch = [
            SubmitRequest(task_type=task_type, parameters={"n": i}) for i in range(start, min(start + 500, n))
        ]
        ids += [s.task.id for s in await runtime.submitter.submit_many(batch)]
    return ids


async def finished(runtime: Runtime, ids: list[str], timeout: float) -> list[BackgroundTask]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = [t for t in await asyncio.gather(*(runtime.store.get(i) for i in ids)) if t is not None]
        if len(tasks) == len(ids) and all(t.status in TERMINAL for t in tasks):
            return tasks
        if time.monotonic() > deadline:
            counts = Counter(t.status.value for t in tasks)
            raise TimeoutError(f"not finished after {timeout}s: {dict(counts)}")
        await asyncio.sleep(0.5)


async def phase(runtime: Runtime, env: dict[str, str], workers: int, task_type: str, n: int) -> None:
    limit = next(cls for cls in EXECUTABLES if cls.task_type == task_type).rate_limits[0]
    procs = start_workers(workers, env)
    try:
        await asyncio.sleep(2.0)  # workers connect and start consuming
        while True:  # until every worker has run something
            warm = await finished(runtime, await submit(runtime, "bench_warm", 50 * workers), 60)
            if len({t.execution_node_id for t in warm}) == workers:
                break
        ids = await submit(runtime, task_type, n)
        tasks = await finished(runtime, ids, timeout=60 + 2 * n / limit.rate.per_second)
    finally:
        stop_workers(procs)
    results = [PacedResult.model_validate(t.result) for t in tasks if t.result is not None]
    starts = sorted(r.started for r in results)
    holds = [r.held for r in results]
    span = starts[-1] - starts[0]
    achieved = (len(starts) - limit.burst) / span
    # The first start follows its slot by a claim (and the first reservations may wait for a
    # store connection), which shortens the span a little: also from the 10th start on.
    steady = (len(starts) - 10) / (starts[-1] - starts[9])
    crowded = max(sum(1 for s in starts[i:] if s < first + 1.0) for i, first in enumerate(starts))
    statuses = Counter(t.status.value for t in tasks)
    retried = sum(1 for t in tasks if t.retry_count)
    per_node = sorted(Counter(t.execution_node_id for t in tasks).values())
    print(
        f"{workers} worker(s), {n} tasks limited to {limit.rate}: first to last start {span:.2f} s, "
        f"{achieved:.2f} starts/s = {achieved / limit.rate.per_second * 100:.1f} % of the limit "
        f"({steady / limit.rate.per_second * 100:.1f} % from the 10th start); most starts in one "
        f"second {crowded}; per worker {per_node}; {dict(statuses)}, retried {retried}"
    )
    print(
        f"  held before the attempt started: p50 {statistics.median(holds) * 1000:.0f} ms, "
        f"p99 {pct(holds, 0.99) * 1000:.0f} ms, max {max(holds) * 1000:.0f} ms (bound 1000 ms)"
    )


async def main(args: argparse.Namespace) -> None:
    registry = ExecutableRegistry(EXECUTABLES)
    module = "tests.bench.bench_ratelimit"
    async with bench_platform(args.store, registry, module, events_bridge_enabled=False) as bench:
        print(f"store={args.store} cpus={os.cpu_count()} type={args.type}")
        for workers in args.workers:
            await phase(bench.runtime, bench.env, workers, args.type, args.n)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument("--type", default="bench_paced_20", choices=[c.task_type for c in EXECUTABLES[:2]])
    p.add_argument("--n", type=int, default=200, help="limited tasks per phase")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes, per phase")
    return p.parse_args()


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the worker process uses
        runner.run(main(parse_args()))
