"""Scaling table (not a test): prints a markdown table, asserts nothing.

The pipeline throughput (N no-op tasks from the first submission to the last COMPLETED in the
store) for 1/2/4 worker processes, on PostgreSQL and SQLite, along two submission paths:

- ``in-process``: ``bench_pipeline.throughput`` — ``TaskSubmitter.submit_many`` in this
  process (batches of ``--batch``, ``--concurrency`` calls in flight), no API;
- ``HTTP``: ``taskplatform api`` with 1/2 processes (``TASKPLATFORM_API_PROCESSES``), driven
  by ``bench_http``'s load generators: ``POST /api/v1/tasks/bulk`` if the API has it (found in
  /openapi.json), else one ``POST /api/v1/tasks`` per task.

Every row is a fresh store, topology and set of processes, with the raw aio-pika loop measured
just before it; its ratio is the row's tasks/s over that loop's msgs/s.

    .venv/bin/python -m tests.bench.bench_scaling --n 10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from taskplatform.models import TaskStatus
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.bench_http import api_platform, wait_completed
from tests.bench.bench_pipeline import throughput
from tests.bench.harness import (
    RawBaseline,
    bench_platform,
    raw_baseline,
    remove_sqlite,
    run_bench,
    server_env,
    start_server,
    stop_servers,
    wait_consumers,
)
from tests.bench.http_load import find_bulk_route, run_generators
from tests.bench.noop import BenchNoop
from tests.bench.procfs import CpuLedger, PgWatch


@dataclass(frozen=True)
class Row:
    store: str
    path: str
    api_processes: int | None
    workers: int
    tasks: int
    seconds: float
    raw: RawBaseline
    cpu: dict[str, float]
    pg_peak: int | None
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0

    def markdown(self) -> str:
        api = "-" if self.api_processes is None else str(self.api_processes)
        cpu = " / ".join(
            f"{self.cpu[name] / max(1, self.tasks) * 1000:.2f}" if name in self.cpu else "-"
            for name in ("submitter", "API", "worker(s)", "RabbitMQ", "PostgreSQL", "rest")
        )
        peak = "-" if self.pg_peak is None else str(self.pg_peak)
        return (
            f"| {self.store} | {self.path} | {api} | {self.workers} | {self.tasks:,} | {self.per_s:,.0f} | "
            f"{self.raw.msgs_per_s:,.0f} | {self.per_s / self.raw.msgs_per_s:.3f} | {cpu} | {peak} |"
            + (f" {self.note}" if self.note else "")
        )


HEADER = (
    "| store | submission path | API processes | worker processes | tasks | tasks/s | raw aio-pika msgs/s "
    "| ratio | CPU ms per task: submitter / API / workers / RabbitMQ / PostgreSQL / rest "
    "| peak PostgreSQL connections |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


async def in_process_row(args: argparse.Namespace, store: str, workers: int, log_dir: Path) -> Row:
    """``bench_pipeline.throughput`` with ``workers`` worker processes."""
    raw = await raw_baseline(args.raw_n)
    registry = ExecutableRegistry([BenchNoop])
    store_url = None
    try:
        async with bench_platform(store, registry, "tests.bench.noop", prefetch=args.prefetch) as bench:
            store_url = bench.env["TASKPLATFORM_STORE_URL"]
            env = server_env(bench.env)
            servers = [start_server("worker", env, log_dir, name=f"worker-{i}") for i in range(workers)]
            try:
                queue = bench.runtime.topology.queue_for("bench_noop")
                assert queue is not None
                await wait_consumers(queue, workers, servers)
                ledger = CpuLedger({"worker(s)": [s.pid for s in servers]})
                async with PgWatch(store_url).watching() as pg:
                    before = ledger.snapshot()
                    result = await throughput(bench.runtime, args.n, args.batch, args.concurrency)
                    cpu = CpuLedger.spent(before, ledger.snapshot())
                cpu["submitter"] = cpu.pop("bench process")
                pg.move_from_rest(cpu)
            finally:
                stop_servers(servers)
    finally:
        if store_url:
            remove_sqlite(store_url)
    return Row(store, "in-process", None, workers, args.n, result["total_s"], raw, cpu, pg.peak)


async def http_row(
    args: argparse.Namespace, store: str, api_processes: int, workers: int, log_dir: Path
) -> Row:
    """The same N tasks submitted through ``taskplatform api`` with ``api_processes`` processes."""
    raw = await raw_baseline(args.raw_n)
    async with api_platform(
        store, api_processes=api_processes, workers=workers, log_dir=log_dir, prefetch=args.prefetch
    ) as platform:
        assert platform.api.base is not None
        bulk = await find_bulk_route(platform.api.base, args.bulk_batch) if args.via != "post" else None
        if args.via == "bulk" and bulk is None:
            raise SystemExit("--via bulk: the API has no bulk submission route")
        ledger = CpuLedger(platform.groups)
        async with PgWatch(platform.runtime.settings.store_url).watching() as pg:
            before = ledger.snapshot()
            start = time.perf_counter()
            load = await run_generators(
                platform.api.base,
                groups={},
                generators=args.generators,
                connections=args.clients or (8 if bulk else 32),
                count=args.n,
                bulk=bulk,
            )
            waited, counts = await wait_completed(platform.runtime, load.accepted, args.complete_timeout)
            seconds = time.perf_counter() - start
            cpu = CpuLedger.spent(before, ledger.snapshot())
        cpu["submitter"] = load.cpu["load generator"]  # the generators' own CPU, measured by each
        cpu["rest"] -= cpu["submitter"]  # they are not in the ledger's groups: out of "rest"
        pg.move_from_rest(cpu)
        done = counts.get(TaskStatus.COMPLETED, 0)
        bad = {k: v for k, v in load.statuses["write"].items() if not k.startswith("2")}
        note = f"(answers not 2xx: {bad})" if bad else ""
        if done < args.n:
            note += f" (only {done:,} of {args.n:,} COMPLETED)"
        path = f"HTTP {'bulk ' + str(bulk.batch) if bulk else 'single POST'}"
        return Row(store, path, api_processes, workers, done, seconds, raw, cpu, pg.peak, note.strip())


async def main(args: argparse.Namespace) -> None:
    print(
        f"bench_scaling: n={args.n:,} per row, prefetch {args.prefetch}, cores={os.cpu_count()} "
        "(trial figures on a shared machine are noisy: compare rows of one run)"
    )
    print(
        "in-process rows: bench_pipeline.throughput (submit_many in the benchmark process, "
        f"{args.batch} a call, {args.concurrency} in flight, no API); HTTP rows: taskplatform api driven by "
        f"bench_http's generators ({args.generators} processes, {args.clients or '8 (bulk) or 32'} "
        "connections), the bulk "
        "route if the API has one, else one POST per task; tasks/s from the first submission to the "
        "last COMPLETED; ratio = tasks/s over the raw aio-pika loop measured just before the row"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    rows: list[Row] = []
    failed = True
    try:
        for store in args.stores:
            for workers in args.workers:
                if "in-process" in args.paths:
                    rows.append(await in_process_row(args, store, workers, log_dir))
                    print(rows[-1].markdown(), flush=True)
                if "http" in args.paths:
                    for api_processes in args.api_processes:
                        rows.append(await http_row(args, store, api_processes, workers, log_dir))
                        print(rows[-1].markdown(), flush=True)
        failed = False
    finally:
        print()
        print(HEADER)
        for row in rows:
            print(row.markdown())
        if failed:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",")]


def str_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", type=str_list, default=["postgresql", "sqlite"], help="postgresql,sqlite")
    p.add_argument("--store", dest="stores", type=str_list, help="one store (same as --stores)")
    p.add_argument("--workers", type=int_list, default=[1, 2, 4], help="worker processes per row, e.g. 1,2,4")
    p.add_argument(
        "--api-processes", type=int_list, default=[1, 2], help="HTTP rows: API processes, e.g. 1,2"
    )
    p.add_argument("--paths", type=str_list, default=["in-process", "http"], help="in-process,http")
    p.add_argument("--n", type=int, default=10000, help="tasks per row")
    p.add_argument("--prefetch", type=int, default=256, help="as bench_pipeline")
    p.add_argument("--batch", type=int, default=200, help="in-process: tasks per submit_many call")
    p.add_argument("--concurrency", type=int, default=4, help="in-process: submit_many calls in flight")
    p.add_argument("--via", choices=["auto", "bulk", "post"], default="auto", help="HTTP: auto = bulk if any")
    p.add_argument("--bulk-batch", type=int, default=200, help="HTTP bulk: tasks per request")
    p.add_argument("--clients", type=int, default=0, help="HTTP: connections in all (0: 8 bulk, 32 single)")
    p.add_argument("--generators", type=int, default=2, help="HTTP: load-generator processes")
    p.add_argument("--complete-timeout", type=float, default=600.0, help="seconds to wait for COMPLETED")
    p.add_argument("--raw-n", type=int, default=10000, help="messages of each raw aio-pika loop")
    return p.parse_args()


if __name__ == "__main__":
    run_bench(main(parse_args()))
