"""Idle CPU benchmark (not a test): prints figures, asserts nothing.

Starts ``taskplatform dev`` (SQLite, as ``scripts/run`` does), ``taskplatform api`` and
``taskplatform worker`` (PostgreSQL by default), each on its own with its default settings,
on a store and topology of its own; waits until it is ready, lets it settle, then samples
/proc once a second while nothing is submitted and prints, per process, the share of one core
it used, its wake-ups (voluntary context switches, every thread) and its resident memory.

Idle CPU is printed beside the raw aio-pika loop measured first in the same run: as the number
of raw-loop messages per second that the same CPU would carry, and that number's ratio to the
raw loop's rate.

    .venv/bin/python -m tests.bench.bench_idle --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import (
    RawBaseline,
    Server,
    bench_platform,
    delete_topology,
    raw_baseline,
    remove_sqlite,
    run_bench,
    served_topology,
    server_env,
    start_server,
    stop_servers,
    wait_consumers,
    wait_http_ready,
)
from tests.bench.noop import BenchNoop
from tests.bench.procfs import ThreadSwitches, thread_switches, tree_cpu, tree_rss_mb, tree_runtime


@dataclass(frozen=True)
class IdleFigures:
    """One server's idle window: CPU seconds in each second (from the threads' scheduler
    statistics), CPU seconds in all from utime + stime (10 ms ticks: a cross-check), wake-ups
    and preemptions per second by thread, resident memory at the end."""

    cpu_per_s: list[float]
    ticks_cpu_per_s: float
    wakeups: dict[str, float]
    preemptions: float
    rss_mb: float


async def sample_idle(server: Server, seconds: float) -> IdleFigures:
    """Sample ``server`` once a second for ``seconds``."""
    runtime = [tree_runtime(server.pid)]
    ticks = tree_cpu(server.pid)
    first = thread_switches(server.pid)
    start = time.monotonic()
    for i in range(1, max(1, int(seconds)) + 1):
        await asyncio.sleep(max(0.0, start + i - time.monotonic()))
        runtime.append(tree_runtime(server.pid))
    elapsed = time.monotonic() - start
    ticks = tree_cpu(server.pid) - ticks
    last = thread_switches(server.pid)
    return IdleFigures(
        [b - a for a, b in zip(runtime, runtime[1:], strict=False)],
        ticks / elapsed,
        wakeups_by_thread(first, last, server.pid, elapsed),
        sum(t.involuntary - first[tid].involuntary for tid, t in last.items() if tid in first) / elapsed,
        tree_rss_mb(server.pid),
    )


def wakeups_by_thread(
    first: dict[int, ThreadSwitches], last: dict[int, ThreadSwitches], pid: int, elapsed: float
) -> dict[str, float]:
    """Voluntary context switches per second of each thread that woke up (threads that
    started during the window count from 0)."""
    out = {}
    for tid, t in last.items():
        before = first[tid].voluntary if tid in first else 0
        if t.voluntary > before:
            label = "main thread" if tid == pid else f"thread {tid} ({t.name})"
            out[label] = (t.voluntary - before) / elapsed
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def report(kind: str, store: str, figures: IdleFigures, raw: RawBaseline) -> None:
    per_s = figures.cpu_per_s
    mean = statistics.fmean(per_s)
    raw_equivalent = mean / (raw.cpu_ms_per_msg / 1000)
    wakeups = sum(figures.wakeups.values())
    threads = ", ".join(f"{name} {n:.1f}/s" for name, n in list(figures.wakeups.items())[:4])
    print(
        f"{kind:<6} ({store}): {mean * 100:.2f} % of one core (max {max(per_s) * 100:.2f} % in a second; "
        f"utime+stime {figures.ticks_cpu_per_s * 100:.1f} %), "
        f"= the CPU of {raw_equivalent:,.0f} raw-loop msgs/s "
        f"(x{raw_equivalent / raw.msgs_per_s:.4f} of raw); "
        f"wake-ups {wakeups:.1f}/s ({threads}), preemptions {figures.preemptions:.1f}/s; "
        f"RSS {figures.rss_mb:.0f} MB"
    )


async def wait_grpc_serving(server: Server, timeout: float = 60.0) -> None:
    """Until the server's gRPC health check says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert server.base is not None
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(server.base) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert server.process.poll() is None, f"{server.name} exited; see {server.log}"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"{server.name} not serving within {timeout:.0f}s"
            await asyncio.sleep(0.2)


async def measure(kind: str, store: str, args: argparse.Namespace, raw: RawBaseline, log_dir: Path) -> None:
    """One server on its own: a fresh store and topology, started with its defaults (the
    harness's broker, store, prefix and executors; log level WARNING), ready, settled, sampled."""
    registry = ExecutableRegistry([BenchNoop])
    store_url = None
    try:
        async with bench_platform(store, registry, "tests.bench.noop") as bench:
            store_url = bench.env["TASKPLATFORM_STORE_URL"]
            env = server_env(
                bench.env,
                outbox_relay_enabled=None,  # the harness turns the relay off; idle means defaults
                auth="disabled" if kind in ("api", "grpc") else None,
                load_entry_points="true" if args.entry_points else "false",
            )
            server = start_server(kind, env, log_dir)
            try:
                if kind == "worker":
                    queue = bench.runtime.topology.queue_for("bench_noop")
                    assert queue is not None
                    await wait_consumers(queue, 1, [server])
                elif kind == "grpc":
                    await wait_grpc_serving(server)
                else:
                    await wait_http_ready(server)
                await asyncio.sleep(args.settle)
                figures = await sample_idle(server, args.seconds)
            finally:
                stop_servers([server])
                await delete_topology(served_topology(env, demo=kind == "dev"))
        report(kind, store, figures, raw)
    finally:
        if store_url:
            remove_sqlite(store_url)


async def main(args: argparse.Namespace) -> None:
    raw = await raw_baseline(args.raw_n)
    print(
        f"bench_idle: {args.seconds:.0f} s per server after {args.settle:.0f} s to settle; "
        f"cores={os.cpu_count()} (trial figures on a shared machine are noisy)"
    )
    print(raw.line())
    log_dir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    failed = True
    try:
        for kind in args.servers:
            store = args.dev_store if kind == "dev" else args.store
            await measure(kind, store, args, raw, log_dir)
        failed = False
    finally:
        if failed:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="api and worker: postgresql | sqlite | a store URL")
    p.add_argument("--dev-store", default="sqlite", help="dev: sqlite (as scripts/run) | postgresql | a URL")
    p.add_argument("--seconds", type=float, default=60.0, help="sampling window per server")
    p.add_argument("--settle", type=float, default=5.0, help="seconds between ready and sampling")
    p.add_argument(
        "--servers",
        type=lambda v: [s.strip() for s in v.split(",")],
        default=["dev", "api", "worker"],
        help="comma-separated: dev,api,grpc,worker",
    )
    p.add_argument("--entry-points", action="store_true", help="also load the reference executors")
    p.add_argument("--raw-n", type=int, default=10000, help="messages of the raw aio-pika loop")
    return p.parse_args()


if __name__ == "__main__":
    run_bench(main(parse_args()))
