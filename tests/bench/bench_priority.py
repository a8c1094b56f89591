"""Priority benchmark (not a test): prints figures, asserts nothing.

A worker process drains a backlog of low-priority (0) tasks; while it does, high-priority (9)
tasks arrive one at a time at a fixed rate. Reported: how long each waited from submission to
start (``started_at − created_at``), the high ones against the low ones, and the worker's
throughput on the backlog. Run it once with the default ``--levels 10`` (one quorum queue per
priority) and once with ``--levels 1`` (every priority in one queue, i.e. no priorities) to
see what the per-level queues buy and cost:

    .venv/bin/python -m tests.bench.bench_priority --backlog 5000 --levels 10
    .venv/bin/python -m tests.bench.bench_priority --backlog 5000 --levels 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import bench_platform, pct, start_workers, stop_workers
from tests.bench.noop import BenchNoop


async def waits_ms(runtime: Runtime, ids: list[str]) -> list[float]:
    waits = []
    for task_id in ids:
        task = await runtime.store.get(task_id)
        assert task is not None and task.started_at is not None, task_id
        waits.append((task.started_at - task.created_at).total_seconds() * 1000)
    return waits


async def all_done(runtime: Runtime, total: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if (await runtime.store.count_by_status()).get(TaskStatus.COMPLETED, 0) >= total:
            return time.perf_counter()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not all {total} tasks completed within {timeout}s")


def summary(name: str, waits: list[float]) -> str:
    return (
        f"{name}: {len(waits)} tasks, submit->start p50 {statistics.median(waits):.1f} ms, "
        f"p99 {pct(waits, 0.99):.1f} ms, max {max(waits):.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    registry = ExecutableRegistry([BenchNoop])
    settings = {"priority_levels": args.levels, "prefetch": args.prefetch}
    async with bench_platform("postgresql", registry, "tests.bench.noop", **settings) as bench:
        runtime = bench.runtime
        low = [
            SubmitRequest(task_type="bench_noop", parameters={"n": i, "sleep": args.work}, priority=0)
            for i in range(args.backlog)
        ]
        low_ids: list[str] = []
        for i in range(0, len(low), 500):
            low_ids += [s.task.id for s in await runtime.submitter.submit_many(low[i : i + 500])]
        workers = start_workers(1, bench.env)
        try:
            start = time.perf_counter()
            await asyncio.sleep(args.delay)  # the worker is busy with the backlog by now
            high_ids = []
            for i in range(args.high):
                request = SubmitRequest(task_type="bench_noop", parameters={"n": -i}, priority=9)
                high_ids.append((await runtime.submitter.submit(request)).task.id)
                await asyncio.sleep(1.0 / args.rate)
            done = await all_done(runtime, args.backlog + args.high, timeout=600)
        finally:
            stop_workers(workers)
        high_waits = await waits_ms(runtime, high_ids)
        low_waits = await waits_ms(runtime, low_ids)
    print(
        f"levels={args.levels} backlog={args.backlog} work={args.work * 1000:.1f} ms/task "
        f"prefetch={args.prefetch} high={args.high} at {args.rate:g}/s cpus={os.cpu_count()}"
    )
    total = args.backlog + args.high
    print(f"  drained {total} tasks in {done - start:.2f} s = {total / (done - start):.0f} tasks/s")
    print("  " + summary("priority 9", high_waits))
    print("  " + summary("priority 0 (the backlog)", low_waits))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, default=10, help="priority levels (queues per group)")
    p.add_argument("--backlog", type=int, default=5000, help="low-priority tasks queued first")
    p.add_argument("--work", type=float, default=0.002, help="seconds each task sleeps")
    p.add_argument("--prefetch", type=int, default=32)
    p.add_argument("--high", type=int, default=40, help="high-priority tasks submitted meanwhile")
    p.add_argument("--rate", type=float, default=20.0, help="high-priority submissions per second")
    p.add_argument("--delay", type=float, default=1.0, help="seconds before the first high one")
    return p.parse_args()


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(parse_args()))
