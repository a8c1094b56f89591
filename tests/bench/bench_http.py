"""HTTP API benchmark (not a test): prints figures, asserts nothing.

Runs ``taskplatform api`` (``--api-processes``, default 1; authentication disabled) and
``taskplatform worker`` as processes on a store and topology of their own, and drives the API
from load-generator processes: ``hey`` when it is installed (closed-loop modes), else the
keep-alive HTTP/1.1 client of ``http_load``, in ``--generators`` processes so that the generator is not
the bottleneck (its CPU is measured and printed).

- ``--mode submit``: ``--clients`` connections POST /api/v1/tasks back to back for
  ``--seconds`` (closed loop); then it waits until every accepted task is COMPLETED.
- ``--mode reads``: the same with GET /api/v1/tasks/{id} of tasks stored beforehand.
- ``--mode mixed --rate R``: open loop. Requests leave on a fixed schedule, R per second in
  all, whatever the answers: ``--read-share`` of them GET a stored task, the rest POST one.
  Each latency runs from the request's scheduled send time, so a stalled server shows in the
  figures instead of slowing the generator down (no coordinated omission).

Every figure is printed beside the raw aio-pika loop measured first in the same run, as a
ratio (rates to its msgs/s, CPU to its client CPU per message, latencies to its one-message
publish → delivery p50), with the machine's core count.

    .venv/bin/python -m tests.bench.bench_http --mode submit --clients 50 --seconds 10
    .venv/bin/python -m tests.bench.bench_http --mode reads --seconds 10
    .venv/bin/python -m tests.bench.bench_http --mode mixed --rate 500 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import (
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
    wait_http_ready,
)
from tests.bench.http_load import READ_PATH, SUBMIT_PATH, LoadRun, run_generators, run_hey, submit_body
from tests.bench.noop import BenchNoop
from tests.bench.procfs import PgWatch


async def seed_tasks(runtime: Runtime, n: int, timeout: float = 300) -> list[str]:
    """``n`` tasks submitted in-process and run to COMPLETED: what the read modes GET."""
    ids = []
    for i in range(0, n, 500):
        chunk = [
            SubmitRequest(task_type="bench_noop", parameters=submit_body(j)["parameters"])
            for j in range(i, min(n, i + 500))
        ]
        ids += [s.task.id for s in await runtime.submitter.submit_many(chunk)]
    await wait_completed(runtime, n, timeout)
    return ids


async def wait_completed(runtime: Runtime, total: int, timeout: float) -> tuple[float, dict[TaskStatus, int]]:
    """Poll the store until ``total`` tasks are COMPLETED: (seconds waited, counts by status);
    on the time-out it returns what it saw (a benchmark prints, it does not fail)."""
    start = time.perf_counter()
    while True:
        counts = await runtime.store.count_by_status()
        if counts.get(TaskStatus.COMPLETED, 0) >= total or time.perf_counter() - start > timeout:
            return time.perf_counter() - start, counts
        await asyncio.sleep(0.25)  # a count is a scan: poll gently


def latency_line(raw: RawBaseline, values: list[float]) -> str:
    if not values:
        return "no answers"
    marks = ", ".join(f"p{q} {raw.latency(pct(values, q / 100))}" for q in (50, 90, 99))
    return f"{marks}, max {max(values):.1f} ms"


def cpu_lines(raw: RawBaseline, cpu: dict[str, float], per: int, what: str, seconds: float) -> list[str]:
    """CPU per request (or task) of every process group, and the API's share of a core."""
    if per == 0:
        return []
    parts = ", ".join(
        f"{name} {raw.cpu(s / per * 1000)}" for name, s in cpu.items() if name != "bench process"
    )
    lines = [f"  CPU per {what}: {parts}"]
    if seconds > 0:
        busy = [
            f"{name} {cpu[name] / seconds * 100:.0f} %" for name in cpu if name.startswith(("API", "load"))
        ]
        lines.append(f"  busy, % of one core: {', '.join(busy)}")
    return lines


def status_line(statuses: Counter[str]) -> str:
    return ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items())) or "none"


@dataclass
class Platform:
    """The API and worker processes of a run and the in-process runtime beside them."""

    runtime: Runtime
    api: Server
    workers: list[Server]

    @property
    def groups(self) -> dict[str, list[int]]:
        return {"API": [self.api.pid], "worker(s)": [w.pid for w in self.workers]}


@contextlib.asynccontextmanager
async def api_platform(
    store: str, *, api_processes: int, workers: int, log_dir: Path, **settings: Any
) -> AsyncIterator[Platform]:
    """A fresh store and topology (``bench_platform``), ``taskplatform api`` with
    ``api_processes`` processes (authentication disabled) and ``workers`` worker processes, all
    ready; everything stopped (killed after 30 s) and deleted afterwards, the SQLite file too."""
    registry = ExecutableRegistry([BenchNoop])
    store_url = None
    try:
        async with bench_platform(store, registry, "tests.bench.noop", **settings) as bench:
            store_url = bench.env["TASKPLATFORM_STORE_URL"]
            env = server_env(bench.env, auth="disabled", api_processes=api_processes)
            metrics_dir = log_dir / "metrics"
            metrics_dir.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # else each run leaves a temporary dir
            servers: list[Server] = []
            try:
                api = start_server("api", env, log_dir)
                servers.append(api)
                servers += [start_server("worker", env, log_dir, name=f"worker-{i}") for i in range(workers)]
                await wait_http_ready(api, processes=api_processes)
                queue = bench.runtime.topology.queue_for("bench_noop")
                assert queue is not None
                await wait_consumers(queue, workers, servers)
                yield Platform(bench.runtime, api, servers[1:])
            finally:
                stop_servers(servers)
    finally:
        if store_url:
            remove_sqlite(store_url)


# ---------------------------------------------------------------- the modes
async def closed_mode(args: argparse.Namespace, raw: RawBaseline, platform: Platform, ids: list[str]) -> int:
    """submit / reads: C clients back to back for D seconds. Returns the tasks accepted."""
    assert platform.api.base is not None
    reads = args.mode == "reads"
    what = f"GET {READ_PATH.format('{id}')}" if reads else f"POST {SUBMIT_PATH}"
    hey = shutil.which("hey") if args.generator in ("auto", "hey") else None
    if args.generator == "hey" and hey is None:
        raise SystemExit("--generator hey: hey is not installed")
    if hey:
        url = platform.api.base + (READ_PATH.format(ids[0]) if reads else SUBMIT_PATH)
        body = None if reads else json.dumps(submit_body(0)).encode()
        async with PgWatch(platform.runtime.settings.store_url).watching() as pg:
            run = await run_hey(
                hey, url, clients=args.clients, seconds=args.seconds, body=body, groups=platform.groups
            )
        pg.move_from_rest(run.cpu)
        print(
            f"{what}, {args.clients} clients (hey{', one id' if reads else ''}), closed loop, "
            f"{args.seconds:.0f} s: "
            f"{run.total:,} requests = {raw.rate(run.per_s)}"
        )
        print(
            "  latency "
            + ", ".join(
                f"p{q} {raw.latency(run.percentiles[q])}" for q in (50, 90, 99) if q in run.percentiles
            )
        )
        print(f"  status codes: {status_line(run.statuses)}; transport errors: {run.errors}")
        for line in cpu_lines(raw, run.cpu, run.total, "request", args.seconds):
            print(line)
        return 0 if reads else run.statuses["201"] + run.statuses["202"]
    return (await generated_closed(args, raw, platform, ids)).accepted


async def generated_closed(
    args: argparse.Namespace, raw: RawBaseline, platform: Platform, ids: list[str]
) -> LoadRun:
    """submit / reads with the keep-alive generator processes of ``http_load``: run, print the
    figures, return the run."""
    assert platform.api.base is not None
    reads = args.mode == "reads"
    kind = "read" if reads else "write"
    what = f"GET {READ_PATH.format('{id}')}" if reads else f"POST {SUBMIT_PATH}"
    async with PgWatch(platform.runtime.settings.store_url).watching() as pg:
        run2 = await run_generators(
            platform.api.base,
            groups=platform.groups,
            generators=args.generators,
            connections=args.clients,
            duration=args.seconds,
            read_share=1.0 if reads else 0.0,
            ids=ids,
        )
    pg.move_from_rest(run2.cpu)
    n = run2.count(kind)
    print(
        f"{what}, {args.clients} clients in {args.generators} generator processes, closed loop, "
        f"{run2.elapsed_s:.1f} s: {n:,} requests = {raw.rate(n / run2.elapsed_s)}"
    )
    print(f"  latency {latency_line(raw, run2.latencies[kind])}")
    print(
        f"  status codes: {status_line(run2.statuses[kind])}; reconnects after idle close: {run2.reconnects}"
    )
    for line in cpu_lines(raw, run2.cpu, n, "request", run2.elapsed_s):
        print(line)
    return run2


async def mixed_mode(args: argparse.Namespace, raw: RawBaseline, platform: Platform, ids: list[str]) -> int:
    """Open loop at a fixed total rate: reads of stored tasks and submissions."""
    assert platform.api.base is not None
    async with PgWatch(platform.runtime.settings.store_url).watching() as pg:
        run = await run_generators(
            platform.api.base,
            groups=platform.groups,
            generators=args.generators,
            connections=args.clients,
            duration=args.seconds,
            read_share=args.read_share,
            ids=ids,
            rate=args.rate,
            drain=args.drain,
        )
    pg.move_from_rest(run.cpu)
    print(
        f"open loop at {args.rate:,.0f} requests/s scheduled ({args.read_share:.0%} GET of stored tasks, "
        f"the rest POST), {args.seconds:.0f} s, up to {args.clients} connections in {args.generators} "
        "generator processes: "
        f"sent {run.sent:,} = {raw.rate(run.sent / args.seconds)}; schedule lag max {run.lag_max_ms:.1f} ms; "
        f"unanswered after {args.drain:.0f} s: {run.unfinished}"
    )
    for kind, label in (("read", "GET "), ("write", "POST")):
        values = run.latencies[kind]
        print(f"  {label} {len(values):,}: latency from the scheduled send {latency_line(raw, values)}")
        print(f"       status codes: {status_line(run.statuses[kind])}")
    for line in cpu_lines(raw, run.cpu, max(1, run.total), "request", run.elapsed_s):
        print(line)
    return run.accepted


async def main(args: argparse.Namespace) -> None:
    raw = await raw_baseline(args.raw_n)
    print(
        f"bench_http --mode {args.mode}: store={args.store} api_processes={args.api_processes} "
        f"workers={args.workers} cores={os.cpu_count()} (trial figures on a shared machine "
        "are noisy: compare within one run)"
    )
    print(raw.line())
    log_dir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    failed = True
    try:
        async with api_platform(
            args.store, api_processes=args.api_processes, workers=args.workers, log_dir=log_dir
        ) as platform:
            ids = await seed_tasks(platform.runtime, args.seed) if args.mode != "submit" else []
            if ids:
                print(f"{len(ids):,} tasks stored and COMPLETED beforehand (what GET reads)")
            started = time.perf_counter()
            if args.mode == "mixed":
                accepted = await mixed_mode(args, raw, platform, ids)
            else:
                accepted = await closed_mode(args, raw, platform, ids)
            if accepted:
                load_s = time.perf_counter() - started
                waited, counts = await wait_completed(
                    platform.runtime, len(ids) + accepted, args.complete_timeout
                )
                done = counts.get(TaskStatus.COMPLETED, 0) - len(ids)
                total_s = load_s + waited
                rate = "" if args.mode == "mixed" else f" (end to end {raw.rate(done / total_s)})"
                print(
                    f"COMPLETED {done:,} of {accepted:,} accepted tasks, {waited:.1f} s after the load "
                    f"ended{rate}; store: " + ", ".join(f"{s.value} {n:,}" for s, n in counts.items())
                )
        failed = False
    finally:
        if failed:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["submit", "reads", "mixed"], default="submit")
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument(
        "--clients", type=int, default=50, help="connections (closed loop: clients; open loop: at most)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="how long the load runs")
    p.add_argument("--rate", type=float, default=500.0, help="mixed: requests/s scheduled, in all")
    p.add_argument("--read-share", type=float, default=0.8, help="mixed: share of GETs")
    p.add_argument("--seed", type=int, default=1000, help="reads, mixed: tasks stored beforehand")
    p.add_argument("--api-processes", type=int, default=1, help="TASKPLATFORM_API_PROCESSES")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--generators", type=int, default=2, help="load-generator processes (without hey)")
    p.add_argument(
        "--generator", choices=["auto", "hey", "python"], default="auto", help="auto: hey if installed"
    )
    p.add_argument("--drain", type=float, default=30.0, help="mixed: seconds to wait for the last answers")
    p.add_argument("--complete-timeout", type=float, default=600.0, help="seconds to wait for COMPLETED")
    p.add_argument("--raw-n", type=int, default=10000, help="messages of the raw aio-pika loop")
    args = p.parse_args(argv)
    if args.mode != "submit" and args.seed < 1:
        p.error(f"--mode {args.mode} reads stored tasks: --seed must be at least 1")
    if args.clients < 1 or args.generators < 1 or args.rate <= 0 or not 0 <= args.read_share <= 1:
        p.error("--clients and --generators must be at least 1, --rate above 0, --read-share within 0..1")
    return args


def run_main() -> None:
    run_bench(main(parse_args()))


if __name__ == "__main__":
    run_main()
