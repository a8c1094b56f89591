"""End-to-end pipeline benchmark (not a test): prints figures, asserts nothing.

Pushes N no-op tasks through the real path — submit (store write, publish with confirms)
→ RabbitMQ quorum queue → worker process(es) (claim, execute, store completion, ack) —
and reports tasks/s from first submit to last COMPLETED in the store. Then submits one task
at a time at a fixed rate and reports submit→start latency (started_at − created_at).
Finally runs a raw aio-pika loop (confirmed publishes to a quorum queue, manual-ack
consumer) over the same broker, as the ceiling to compare with.

    .venv/bin/python -m tests.bench.bench_pipeline --store postgresql --n 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
import uuid

import aio_pika

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import AMQP_URL, bench_platform, pct, start_workers, stop_workers
from tests.bench.noop import BenchNoop
from tests.bench.procfs import broker_pid, machine_busy, proc_cpu


class CpuMeter:
    """CPU per task: the submitting process, the workers, the broker, and the rest (database)."""

    def __init__(self, workers: list[subprocess.Popen[bytes]]) -> None:
        self.pids = [p.pid for p in workers]
        self.broker = broker_pid()

    def snapshot(self) -> tuple[float, ...]:
        broker = proc_cpu(self.broker) if self.broker else 0.0
        return proc_cpu(os.getpid()), sum(proc_cpu(p) for p in self.pids), broker, machine_busy()

    @staticmethod
    def per_task(before: tuple[float, ...], after: tuple[float, ...], n: int) -> str:
        submit, worker, broker, total = (b - a for a, b in zip(before, after, strict=True))
        rest = total - submit - worker - broker
        parts = {"submitter": submit, "worker(s)": worker, "RabbitMQ": broker, "PostgreSQL+rest": rest}
        return "CPU per task: " + ", ".join(f"{k} {v / n * 1000:.2f} ms" for k, v in parts.items())


async def wait_completed(runtime: Runtime, total: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        counts = await runtime.store.count_by_status()
        if counts.get(TaskStatus.COMPLETED, 0) >= total:
            return time.perf_counter()
        await asyncio.sleep(0.1)  # a count is a scan: poll gently, the measurement loads the store
    raise TimeoutError(f"only {counts} after {timeout}s")


async def throughput(runtime: Runtime, n: int, batch: int, concurrency: int) -> dict[str, float]:
    requests = [SubmitRequest(task_type="bench_noop", parameters={"n": i}) for i in range(n)]
    chunks = [requests[i : i + batch] for i in range(0, n, batch)]
    sem = asyncio.Semaphore(concurrency)

    async def send(chunk: list[SubmitRequest]) -> None:
        async with sem:
            results = await runtime.submitter.submit_many(chunk)
            assert all(r.published for r in results), "a publish failed"

    start = time.perf_counter()
    await asyncio.gather(*(send(c) for c in chunks))
    submitted = time.perf_counter()
    done = await wait_completed(runtime, n, timeout=600)
    total = done - start
    return {"tasks": n, "total_s": total, "tasks_per_s": n / total, "submit_per_s": n / (submitted - start)}


async def latency(runtime: Runtime, n: int, rate: float, already: int) -> dict[str, float]:
    """Submissions arrive on a fixed schedule, each independent of the others (like API clients)."""
    interval = 1.0 / rate
    pending = []
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        req = SubmitRequest(task_type="bench_noop", parameters={"n": i})
        pending.append(asyncio.create_task(timed_submit(runtime, req)))
    done = await asyncio.gather(*pending)
    ids = [task_id for task_id, _ in done]
    submit_ms = [ms for _, ms in done]
    achieved = n / (time.perf_counter() - start)
    await wait_completed(runtime, already + n, timeout=120)
    waits = []
    for task_id in ids:
        task = await runtime.store.get(task_id)
        assert task is not None and task.started_at is not None
        waits.append((task.started_at - task.created_at).total_seconds() * 1000)
    p50, p99 = statistics.median(waits), pct(waits, 0.99)
    return {
        "tasks": n,
        "rate_per_s": achieved,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max(waits),
        "submit_p50_ms": statistics.median(submit_ms),
        "submit_p99_ms": pct(submit_ms, 0.99),
    }


async def timed_submit(runtime: Runtime, request: SubmitRequest) -> tuple[str, float]:
    """One submission (store write + confirmed publish), and how long the caller waited for it."""
    start = time.perf_counter()
    submitted = await runtime.submitter.submit(request)
    return submitted.task.id, (time.perf_counter() - start) * 1000


async def raw_aio_pika(n: int, prefetch: int, batch: int) -> dict[str, float]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    pub_channel = await connection.channel(publisher_confirms=True)
    queue_name = f"bench.raw.{uuid.uuid4().hex[:8]}"
    queue = await pub_channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    con_channel = await connection.channel()
    await con_channel.set_qos(prefetch_count=prefetch)
    cqueue = await con_channel.get_queue(queue_name)
    received = 0
    finished = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal received
        await message.ack()
        received += 1
        if received >= n:
            finished.set()

    await cqueue.consume(on_message)
    body = b'{"task_id": "x", "task_type": "bench_noop", "parameters": {"n": 1}}'
    start = time.perf_counter()
    for i in range(0, n, batch):
        await asyncio.gather(
            *(
                pub_channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue_name,
                )
                for _ in range(min(batch, n - i))
            )
        )
    await finished.wait()
    elapsed = time.perf_counter() - start
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()
    return {"messages": n, "total_s": elapsed, "msgs_per_s": n / elapsed}


async def main(args: argparse.Namespace) -> None:
    registry = ExecutableRegistry([BenchNoop])
    async with bench_platform(args.store, registry, "tests.bench.noop", prefetch=args.prefetch) as bench:
        runtime = bench.runtime
        workers = start_workers(args.workers, bench.env)
        try:
            await asyncio.sleep(2.0)  # workers connect and start consuming
            print(f"store={args.store} workers={args.workers} prefetch={args.prefetch} cpus={os.cpu_count()}")
            meter = CpuMeter(workers)
            before = meter.snapshot()
            tp = await throughput(runtime, args.n, args.batch, args.concurrency)
            tp_cpu = meter.per_task(before, meter.snapshot(), args.n)
            print(
                f"end-to-end: {tp['tasks']:.0f} tasks in {tp['total_s']:.2f}s = "
                f"{tp['tasks_per_s']:.0f} tasks/s (submitting alone: {tp['submit_per_s']:.0f}/s)"
            )
            print(f"  {tp_cpu}")
            await asyncio.sleep(args.settle)  # let the broker and database digest the burst
            before = meter.snapshot()
            lat = await latency(runtime, args.latency_n, args.rate, already=args.n)
            lat_cpu = meter.per_task(before, meter.snapshot(), args.latency_n)
            print(
                f"submit->start at {lat['rate_per_s']:.0f} tasks/s: p50 {lat['p50_ms']:.2f} ms, "
                f"p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms ({lat['tasks']:.0f} tasks); "
                f"the submit call itself: p50 {lat['submit_p50_ms']:.2f} ms, "
                f"p99 {lat['submit_p99_ms']:.2f} ms"
            )
            print(f"  {lat_cpu}")
        finally:
            stop_workers(workers)
    raw = await raw_aio_pika(args.n, args.prefetch, args.batch)
    print(
        f"raw aio-pika (confirmed publish -> quorum queue -> manual ack, one process): "
        f"{raw['messages']:.0f} msgs in {raw['total_s']:.2f}s = {raw['msgs_per_s']:.0f} msgs/s"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument("--n", type=int, default=10000, help="tasks in the throughput phase")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--prefetch", type=int, default=256)
    p.add_argument("--batch", type=int, default=200, help="tasks per submit_many call")
    p.add_argument("--concurrency", type=int, default=4, help="submit_many calls in flight")
    p.add_argument("--rate", type=float, default=200.0, help="tasks/s in the latency phase")
    p.add_argument("--latency-n", type=int, default=1000, help="tasks in the latency phase")
    p.add_argument("--settle", type=float, default=0.0, help="seconds to wait between the two phases")
    return p.parse_args()


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the worker process uses
        runner.run(main(parse_args()))
