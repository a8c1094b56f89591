"""gRPC CreateTask benchmark beside HTTP's POST /api/v1/tasks (not a test): prints figures,
asserts nothing.

One run measures, in this order: the raw aio-pika loop; then ``taskplatform grpc`` (one process,
authentication disabled) and ``taskplatform worker`` on a store and topology of their own, driven
by ``--generators`` load-generator processes (``grpc_load``: ``grpc.aio`` channels) making
``--streams`` concurrent CreateTask calls in all, back to back (closed loop) for ``--seconds``;
then, on a fresh store and topology, ``taskplatform api`` (one process) and a worker driven by
``bench_http``'s submit mode with as many clients (its keep-alive generator processes);
``--http-first`` swaps the two, to alternate. Each side waits until every accepted task is
COMPLETED (the drain). Every figure is printed beside the raw loop, as a ratio (rates to its
msgs/s, CPU to its client CPU per message, latencies to its publish → delivery p50), with the
machine's core count; a table of both sides ends the run. The worker processes' own node queues
are deleted with the rest of the topology.

    .venv/bin/python -m tests.bench.bench_grpc --streams 50 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika

from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.bench_http import (
    api_platform,
    cpu_lines,
    generated_closed,
    latency_line,
    status_line,
    wait_completed,
)
from tests.bench.bench_idle import wait_grpc_serving
from tests.bench.grpc_load import CALL_TIMEOUT_S, create_request, open_channel, run_grpc_generators
from tests.bench.harness import (
    AMQP_URL,
    RawBaseline,
    Server,
    bench_platform,
    pct,
    raw_baseline,
    remove_sqlite,
    run_bench,
    server_env,
    start_server,
    stop_servers,
    wait_consumers,
)
from tests.bench.noop import BenchNoop
from tests.bench.procfs import PgWatch
from topology.spec import node_queue_name

#: The front door's process group in the CPU figures (``bench_http.cpu_lines`` prints how busy
#: the groups named ``API…`` were).
GRPC_GROUP = "API (gRPC)"


@dataclass
class GrpcPlatform:
    """The gRPC and worker processes of a run, the runtime beside them, and the tasks the
    warm-up stored and published (they count in the drain)."""

    runtime: Runtime
    server: Server
    workers: list[Server]
    warmed: int

    @property
    def groups(self) -> dict[str, list[int]]:
        return {GRPC_GROUP: [self.server.pid], "worker(s)": [w.pid for w in self.workers]}


async def warm_up(target: str, timeout: float = 60.0) -> int:
    """CreateTask until one is published: the server says SERVING once it listens, possibly
    before its broker connection is up (a task stored then stays unpublished: the benchmark's
    relay is off). Returns the tasks stored and published."""
    deadline = time.monotonic() + timeout
    async with open_channel(target) as channel:
        stub: Any = pb_grpc.TasksStub(channel)  # type: ignore[no-untyped-call]  # generated
        while True:
            answer = await stub.CreateTask(create_request(-1), timeout=CALL_TIMEOUT_S)
            if answer.published:
                return 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"no CreateTask published within {timeout:.0f} s: is the broker up?")
            await asyncio.sleep(0.5)


async def delete_node_queues(prefix: str, workers: int) -> None:
    """The worker processes' own queues (``tasks.node.bench-worker-<i>``): a worker declares
    its node's queue, which the topology ``bench_platform`` deletes does not list (it would
    otherwise stay a week, its ``x-expires``)."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        channel = await connection.channel()
        for i in range(workers):
            await channel.queue_delete(node_queue_name(f"bench-worker-{i}", prefix))
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def grpc_platform(store: str, *, workers: int, log_dir: Path) -> AsyncIterator[GrpcPlatform]:
    """As ``bench_http.api_platform``, with ``taskplatform grpc`` as the front door: a fresh
    store and topology, the server (authentication disabled) and ``workers`` worker processes,
    all ready; everything stopped and deleted afterwards."""
    registry = ExecutableRegistry([BenchNoop])
    store_url = None
    try:
        async with bench_platform(store, registry, "tests.bench.noop") as bench:
            store_url = bench.env["TASKPLATFORM_STORE_URL"]
            env = server_env(bench.env, auth="disabled")
            servers: list[Server] = []
            try:
                server = start_server("grpc", env, log_dir)
                servers.append(server)
                servers += [start_server("worker", env, log_dir, name=f"worker-{i}") for i in range(workers)]
                await wait_grpc_serving(server)
                queue = bench.runtime.topology.queue_for("bench_noop")
                assert queue is not None and server.base is not None
                await wait_consumers(queue, workers, servers)
                warmed = await warm_up(server.base)
                yield GrpcPlatform(bench.runtime, server, servers[1:], warmed)
            finally:
                stop_servers(servers)
                await delete_node_queues(bench.env["TASKPLATFORM_TOPOLOGY_PREFIX"], workers)
    finally:
        if store_url:
            remove_sqlite(store_url)


@dataclass(frozen=True)
class Side:
    """One front door's figures, for the closing table."""

    name: str
    calls: int
    per_s: float
    p50_ms: float
    p99_ms: float
    refused: int
    api_cpu_ms: float
    generator_busy: float
    accepted: int
    completed: int
    drain_s: float
    end_to_end: float


async def drain(
    runtime: Runtime, expected: int, before: int, load_s: float, timeout: float
) -> tuple[int, float, float]:
    """Wait until ``expected`` tasks are COMPLETED (``before`` of them were stored before the
    load, ``load_s`` long) and print it: (the load's tasks COMPLETED, seconds waited after the
    load, end-to-end tasks/s from the first call to the last COMPLETED)."""
    waited, counts = await wait_completed(runtime, expected, timeout)
    done = counts.get(TaskStatus.COMPLETED, 0) - before
    print(
        f"  COMPLETED {done:,} of {expected - before:,} accepted tasks, {waited:.1f} s after the load ended; "
        "store: " + ", ".join(f"{s.value} {n:,}" for s, n in counts.items())
    )
    return done, waited, done / (load_s + waited)


async def grpc_side(args: argparse.Namespace, raw: RawBaseline, log_dir: Path) -> Side:
    async with grpc_platform(args.store, workers=args.workers, log_dir=log_dir) as platform:
        assert platform.server.base is not None
        async with PgWatch(platform.runtime.settings.store_url).watching() as pg:
            run = await run_grpc_generators(
                platform.server.base,
                groups=platform.groups,
                generators=args.generators,
                streams=args.streams,
                channels=args.channels,
                duration=args.seconds,
            )
        pg.move_from_rest(run.cpu)
        n = len(run.latencies)
        print(
            f"gRPC CreateTask, {args.streams} concurrent calls over {args.channels} channel(s) in each of "
            f"{args.generators} generator processes, closed loop, {run.elapsed_s:.1f} s: "
            f"{n:,} calls = {raw.rate(n / run.elapsed_s)}"
        )
        print(f"  latency {latency_line(raw, run.latencies)}")
        print(f"  status codes: {status_line(run.codes)}; accepted but not published: {run.unpublished}")
        for line in cpu_lines(raw, run.cpu, n, "call", run.elapsed_s):
            print(line)
        published = run.accepted - run.unpublished
        done, waited, end_to_end = await drain(
            platform.runtime,
            platform.warmed + published,
            platform.warmed,
            run.elapsed_s,
            args.complete_timeout,
        )
    return Side(
        "gRPC CreateTask",
        n,
        n / run.elapsed_s,
        pct(run.latencies, 0.5) if n else 0.0,
        pct(run.latencies, 0.99) if n else 0.0,
        n - run.accepted,
        run.cpu[GRPC_GROUP] / max(1, n) * 1000,
        run.cpu["load generator"] / run.elapsed_s,
        run.accepted,
        done,
        waited,
        end_to_end,
    )


async def http_side(args: argparse.Namespace, raw: RawBaseline, log_dir: Path) -> Side:
    http_args = argparse.Namespace(
        mode="submit", clients=args.streams, seconds=args.seconds, generators=args.generators
    )
    prefix = ""
    try:
        async with api_platform(
            args.store, api_processes=1, workers=args.workers, log_dir=log_dir
        ) as platform:
            prefix = platform.runtime.settings.topology_prefix
            run = await generated_closed(http_args, raw, platform, [])
            done, waited, end_to_end = await drain(
                platform.runtime, run.accepted, 0, run.elapsed_s, args.complete_timeout
            )
    finally:
        if prefix:  # the workers have stopped: their node queues stay empty now
            await delete_node_queues(prefix, args.workers)
    values = run.latencies["write"]
    n = len(values)
    return Side(
        "HTTP POST /api/v1/tasks",
        n,
        n / run.elapsed_s,
        pct(values, 0.5) if n else 0.0,
        pct(values, 0.99) if n else 0.0,
        n - run.accepted,
        run.cpu["API"] / max(1, n) * 1000,
        run.cpu["load generator"] / run.elapsed_s,
        run.accepted,
        done,
        waited,
        end_to_end,
    )


def table(raw: RawBaseline, sides: list[Side]) -> None:
    """Both sides, absolute and as ratios to the raw loop."""
    print(
        f"\nsummary (cores={os.cpu_count()}; raw loop {raw.msgs_per_s:,.0f} msgs/s, "
        f"{raw.cpu_ms_per_msg:.3f} ms CPU per msg, rtt p50 {raw.rtt_p50_ms:.2f} ms):"
    )
    head = (
        "front door",
        "req/s",
        "x raw",
        "p50 ms",
        "x rtt",
        "p99 ms",
        "x rtt",
        "refused",
        "API CPU ms/req",
        "x raw msg",
        "generators % core",
        "drain s",
        "end-to-end/s",
        "x raw",
    )
    print(" | ".join(head))
    for s in sides:
        print(
            " | ".join(
                [
                    s.name,
                    f"{s.per_s:,.0f}",
                    f"{s.per_s / raw.msgs_per_s:.3f}",
                    f"{s.p50_ms:.1f}",
                    f"{s.p50_ms / raw.rtt_p50_ms:.0f}",
                    f"{s.p99_ms:.1f}",
                    f"{s.p99_ms / raw.rtt_p50_ms:.0f}",
                    f"{s.refused:,}",
                    f"{s.api_cpu_ms:.3f}",
                    f"{s.api_cpu_ms / raw.cpu_ms_per_msg:.1f}",
                    f"{s.generator_busy * 100:.0f}",
                    f"{s.drain_s:.1f}",
                    f"{s.end_to_end:,.0f}",
                    f"{s.end_to_end / raw.msgs_per_s:.3f}",
                ]
            )
        )
    if len(sides) == 2 and sides[1].per_s:
        print(f"gRPC / HTTP requests/s: {sides[0].per_s / sides[1].per_s:.2f}")


async def main(args: argparse.Namespace) -> None:
    raw = await raw_baseline(args.raw_n)
    print(
        f"bench_grpc: store={args.store} workers={args.workers} streams={args.streams} "
        f"generators={args.generators} cores={os.cpu_count()} (figures on a shared machine are "
        "noisy: compare within one run)"
    )
    print(raw.line())
    log_dir = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    failed = True
    try:
        http = None
        if args.http_first:
            http = await http_side(args, raw, log_dir)
        sides = [await grpc_side(args, raw, log_dir)]
        if http is None and not args.grpc_only:
            http = await http_side(args, raw, log_dir)
        table(raw, sides if http is None else [*sides, http])
        failed = False
    finally:
        if failed:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument("--streams", type=int, default=50, help="concurrent calls (HTTP: clients), in all")
    p.add_argument("--seconds", type=float, default=10.0, help="how long each load runs")
    p.add_argument("--generators", type=int, default=2, help="load-generator processes per side")
    p.add_argument("--channels", type=int, default=1, help="gRPC: connections per generator process")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--grpc-only", action="store_true", help="skip the HTTP side")
    p.add_argument("--http-first", action="store_true", help="measure HTTP before gRPC (to alternate)")
    p.add_argument("--complete-timeout", type=float, default=600.0, help="seconds to wait for COMPLETED")
    p.add_argument("--raw-n", type=int, default=10000, help="messages of the raw aio-pika loop")
    args = p.parse_args(argv)
    if args.grpc_only and args.http_first:
        p.error("--grpc-only and --http-first exclude each other")
    if args.streams < 1 or args.generators < 1 or args.channels < 1 or args.workers < 1:
        p.error("--streams, --generators, --channels and --workers must be at least 1")
    return args


def run_main() -> None:
    run_bench(main(parse_args()))


if __name__ == "__main__":
    run_main()
