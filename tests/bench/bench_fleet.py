"""Fleet benchmark (not a test): prints figures, asserts nothing.

``--nodes`` (200) worker nodes register and heartbeat on a PostgreSQL store of their own, hosted
``--per-process`` (20) to a process by ``tests/bench/fleet_host.py`` (each node a whole consuming
runtime with its own broker connection and node queue; a process's nodes share one store pool of
``--store-connections``: 200 pools would not fit PostgreSQL's 100 connections). ``taskplatform
api`` (authentication disabled, the reaper on) takes the submissions. Every node carries the
label ``fleet=bench`` and the agent's ``run_command`` with one template, ``/bin/echo hello``.

1. **Start-up**: time until every node's record is online.
2. **Idle heartbeats** over ``--idle-seconds``: rows written to the ``workers`` table per second
   (PostgreSQL's own counters, ``pg_stat_user_tables``), beside what one write per node per
   interval predicts, and every write of the database in the same window; each process's CPU.
3. **Soak** for ``--soak-seconds`` (600): every ``--every`` seconds one ``POST /api/v1/tasks``
   fans ``run_command`` out to ``{"labels": {"fleet": "bench"}, "mode": "each"}``; per round, the
   time from the request until the first and the last host started (children's ``started_at``)
   and until the parent ended, and a check that each node ran its child once (exit code 0).
   Every ``--sample-seconds`` each process's resident memory (VmRSS); at the end, each process's
   largest deviation from its first sample after ``--warmup-seconds``, in ± %.

Rates and times are printed beside the raw aio-pika loop measured first in the same run.

    .venv/bin/python -m tests.bench.bench_fleet --nodes 200 --soak-seconds 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from taskplatform.agent import agent_executable
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import (
    ROOT,
    RawBaseline,
    Server,
    bench_platform,
    die_with_parent,
    pct,
    raw_baseline,
    run_bench,
    server_env,
    start_server,
    stop_servers,
    wait_http_ready,
)
from tests.bench.noop import BenchNoop
from tests.bench.procfs import tree_cpu, tree_rss_mb
from topology.spec import node_queue_name

LABELS = {"fleet": "bench"}
FINISHED = (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS, TaskStatus.FAILED, TaskStatus.CANCELLED)


def start_host(index: int, nodes: list[str], env: dict[str, str], log_dir: Path) -> Server:
    """``tests/bench/fleet_host.py`` hosting ``nodes``, its output to a log file."""
    name = f"host-{index:02d}"
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tests.bench.fleet_host", *nodes],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    return Server(name, process, log)


@dataclass(frozen=True)
class WriteCounters:
    """PostgreSQL's write counters at one moment: the ``workers`` table's rows inserted and
    updated, and the whole database's rows written and transactions committed."""

    at: float
    worker_rows: int
    db_rows: int
    commits: int

    def per_s(self, before: WriteCounters) -> tuple[float, float, float]:
        span = self.at - before.at
        return (
            (self.worker_rows - before.worker_rows) / span,
            (self.db_rows - before.db_rows) / span,
            (self.commits - before.commits) / span,
        )


async def write_counters(conn: Any) -> WriteCounters:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    table = await conn.fetchrow(
        "SELECT n_tup_ins + n_tup_upd AS rows FROM pg_stat_user_tables WHERE relname = 'workers'"
    )
    db = await conn.fetchrow(
        "SELECT tup_inserted + tup_updated + tup_deleted AS rows, xact_commit "
        "FROM pg_stat_database WHERE datname = current_database()"
    )
    return WriteCounters(time.monotonic(), int(table["rows"]), int(db["rows"]), int(db["xact_commit"]))


async def online_count(conn: Any) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM workers WHERE state = 'online' AND expires_at > now()")
    )


@dataclass
class Round:
    """One fan-out: seconds from the request until the first and the last host started, until
    the parent ended; how many children, distinct nodes and clean exits."""

    first_started: float
    all_started: float
    ended: float
    children: int
    nodes: int
    clean: int
    status: TaskStatus


async def fan_out(client: httpx.AsyncClient, runtime: Runtime, timeout: float) -> Round:
    body = {
        "task_type": "run_command",
        "parameters": {"template": "hello", "args": {}},
        "target": {"labels": LABELS, "mode": "each"},
    }
    sent = datetime.now(UTC)
    t0 = time.monotonic()
    answer = await client.post("/api/v1/tasks", json=body)
    answer.raise_for_status()
    parent_id = answer.json()["task_id"]
    deadline = t0 + timeout
    while True:
        parent = await runtime.store.get(parent_id)
        if parent is not None and parent.status in FINISHED:
            ended = time.monotonic() - t0
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"fan-out {parent_id} not finished in {timeout:.0f} s")
        await asyncio.sleep(0.05)
    children: list[BackgroundTask] = [t async for page in runtime.store.child_pages(parent_id) for t in page]
    starts = [(c.started_at - sent).total_seconds() for c in children if c.started_at is not None]
    clean = sum(
        1
        for c in children
        if c.status is TaskStatus.COMPLETED and c.result is not None and c.result.get("exit_code") == 0
    )
    return Round(
        first_started=min(starts, default=float("nan")),
        all_started=max(starts, default=float("nan")),
        ended=ended,
        children=len(children),
        nodes=len({c.execution_node_id for c in children}),
        clean=clean,
        status=parent.status,
    )


@dataclass
class RssLog:
    """Resident memory per process, sampled over the soak."""

    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def sample(self, elapsed: float, servers: list[Server]) -> str:
        parts = []
        for server in servers:
            rss = tree_rss_mb(server.pid)
            self.samples.setdefault(server.name, []).append((elapsed, rss))
            parts.append(f"{server.name} {rss:.0f}")
        return " ".join(parts)

    def drift(self, warmup: float) -> dict[str, tuple[float, float, float]]:
        """Per process: the first sample after ``warmup``, the last, the largest deviation in %."""
        out = {}
        for name, samples in self.samples.items():
            after = [rss for at, rss in samples if at >= warmup] or [samples[-1][1]]
            base = after[0]
            out[name] = (base, after[-1], max(abs(rss - base) / base * 100 for rss in after))
        return out


class WaitSampler:
    """What the database's busy connections wait on, sampled every ``every`` seconds in the
    background (``pg_stat_activity``): counts by wait event and the statement's first words."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self._url = url
        self._every = every
        self.samples = 0
        self.waits: Counter[tuple[str, str]] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        conn = await asyncpg.connect(self._url)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS wait, "
                    "left(regexp_replace(query, '\\s+', ' ', 'g'), 48) AS query FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"
                )
                self.samples += 1
                self.waits.update((row["wait"], row["query"]) for row in rows)
                await asyncio.sleep(self._every)
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def top(self, n: int = 4) -> str:
        """The ``n`` commonest (wait, statement) pairs: busy connections on average, per sample."""
        return "; ".join(
            f"{count / max(1, self.samples):.2f} x {wait} in '{query}'"
            for (wait, query), count in self.waits.most_common(n)
        )


def commands_file(directory: Path) -> Path:
    path = directory / "commands.json"
    path.write_text(json.dumps({"commands": [{"name": "hello", "argv": ["/bin/echo", "hello"]}]}))
    return path


async def main(args: argparse.Namespace) -> None:  # noqa: C901, PLR0915  (one run, printed as it goes)
    raw: RawBaseline = await raw_baseline()
    print(raw.line(), flush=True)
    nodes = [f"fleet-{i:03d}" for i in range(args.nodes)]
    groups = [nodes[i : i + args.per_process] for i in range(0, len(nodes), args.per_process)]
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        log_dir = Path(tmp)
        commands = commands_file(log_dir)
        registry = ExecutableRegistry([BenchNoop, agent_executable(commands)])
        async with bench_platform(
            "postgresql",
            registry,
            "tests.bench.noop",
            agent_commands_file=commands,
            reaper_enabled=False,
            worker_heartbeat_seconds=args.heartbeat,
        ) as bench:
            env = server_env(bench.env, auth="disabled")
            api_env = {**env, "TASKPLATFORM_REAPER_ENABLED": "true"}
            host_env = {
                **env,
                "TASKPLATFORM_WORKER_LABELS": ",".join(f"{k}={v}" for k, v in LABELS.items()),
                "TASKPLATFORM_STORE_MAX_CONNECTIONS": str(args.store_connections),
            }
            pg_url = bench.env["TASKPLATFORM_STORE_URL"].replace("postgresql+asyncpg://", "postgresql://")
            conn = await asyncpg.connect(pg_url)
            servers: list[Server] = []
            try:
                api = start_server("api", api_env, log_dir)
                servers.append(api)
                started = time.monotonic()
                hosts = [start_host(i, group, host_env, log_dir) for i, group in enumerate(groups)]
                servers += hosts
                await wait_http_ready(api)
                while (online := await online_count(conn)) < len(nodes):
                    if time.monotonic() - started > args.start_timeout:
                        raise RuntimeError(
                            f"{online} of {len(nodes)} nodes online after {args.start_timeout:.0f} s; "
                            f"last host log:\n{hosts[-1].log_tail()}"
                        )
                    for host in hosts:
                        if host.process.poll() is not None:
                            raise RuntimeError(f"{host.name} exited:\n{host.log_tail()}")
                    await asyncio.sleep(0.5)
                print(
                    f"{len(nodes)} nodes in {len(hosts)} processes ({args.per_process} per process, "
                    f"{args.store_connections} store connections per process), heartbeat every "
                    f"{args.heartbeat:g} s: all online {time.monotonic() - started:.1f} s after start",
                    flush=True,
                )

                # 2. idle heartbeats
                await asyncio.sleep(2 * args.heartbeat)  # past the start-up writes
                cpu_before = {s.name: tree_cpu(s.pid) for s in servers}
                before = await write_counters(conn)
                await asyncio.sleep(args.idle_seconds)
                after = await write_counters(conn)
                cpu = {
                    s.name: (tree_cpu(s.pid) - cpu_before[s.name]) / (after.at - before.at) for s in servers
                }
                beats, rows, commits = after.per_s(before)
                row_bytes = await conn.fetchval("SELECT avg(pg_column_size(w.*)) FROM workers w")
                print(
                    f"idle {after.at - before.at:.0f} s: heartbeat rows written {beats:.1f}/s "
                    f"(x{beats / raw.msgs_per_s:.4f} of raw {raw.msgs_per_s:,.0f} msgs/s), "
                    f"predicted {len(nodes) / args.heartbeat:.1f}/s "
                    f"({len(nodes)} nodes / {args.heartbeat:g} s), a record {row_bytes:.0f} bytes; "
                    f"every row written in the database {rows:.1f}/s, commits {commits:.1f}/s",
                    flush=True,
                )
                host_cpu = [cpu[h.name] for h in hosts]
                print(
                    f"idle CPU (share of one core): api {cpu['api'] * 100:.1f} %; hosts of "
                    f"{args.per_process} nodes: mean {statistics.mean(host_cpu) * 100:.1f} %, "
                    f"max {max(host_cpu) * 100:.1f} % "
                    f"({statistics.mean(host_cpu) / args.per_process * 100:.2f} % per node)",
                    flush=True,
                )

                # 3. soak
                rss = RssLog()
                rounds: list[Round] = []
                soak_start = time.monotonic()
                print(
                    f"soak {args.soak_seconds:.0f} s, a fan-out every {args.every:g} s; RSS MB:", flush=True
                )
                print(f"  t=0 s {rss.sample(0.0, servers)}", flush=True)
                soak_before = await write_counters(conn)
                waits = WaitSampler(pg_url)
                waits.start()
                next_sample = args.sample_seconds
                async with httpx.AsyncClient(base_url=api.base or "", timeout=30) as client:
                    while (elapsed := time.monotonic() - soak_start) < args.soak_seconds:
                        fired = time.monotonic()
                        result = await fan_out(client, bench.runtime, timeout=max(60.0, args.every * 4))
                        rounds.append(result)
                        print(
                            f"  round {len(rounds)}: {result.status.value}, {result.children} children on "
                            f"{result.nodes} nodes, {result.clean} exit 0; first host started "
                            f"{result.first_started * 1000:.0f} ms, every host started "
                            f"{result.all_started * 1000:.0f} ms, parent ended {result.ended * 1000:.0f} ms",
                            flush=True,
                        )
                        elapsed = time.monotonic() - soak_start
                        if elapsed >= next_sample:
                            print(f"  t={elapsed:.0f} s {rss.sample(elapsed, servers)}", flush=True)
                            next_sample += args.sample_seconds
                        await asyncio.sleep(max(0.0, args.every - (time.monotonic() - fired)))
                soak_after = await write_counters(conn)
                await waits.stop()
                elapsed = time.monotonic() - soak_start
                print(f"  t={elapsed:.0f} s {rss.sample(elapsed, servers)}", flush=True)

                # summary
                beats, rows, commits = soak_after.per_s(soak_before)
                print(
                    f"soak: heartbeat rows written {beats:.1f}/s; every row written {rows:.1f}/s, "
                    f"commits {commits:.1f}/s (the fan-outs included)"
                )
                every = [r.all_started * 1000 for r in rounds]
                ended = [r.ended * 1000 for r in rounds]
                exact = sum(1 for r in rounds if r.children == r.nodes == r.clean == len(nodes))
                print(
                    f"{len(rounds)} fan-outs to {len(nodes)} hosts, {exact} with one clean run on every "
                    f"host and no other; request -> every host started: p50 "
                    f"{raw.latency(statistics.median(every))}, max {max(every):.0f} ms; request -> parent "
                    f"ended: p50 {statistics.median(ended):.0f} ms, p90 {pct(ended, 0.9):.0f} ms"
                )
                drift = rss.drift(args.warmup_seconds)
                worst = max(drift.items(), key=lambda item: item[1][2])
                print(
                    f"RSS after {args.warmup_seconds:.0f} s warm-up: api {drift['api'][0]:.0f} -> "
                    f"{drift['api'][1]:.0f} MB (±{drift['api'][2]:.1f} %); hosts: "
                    + ", ".join(
                        f"{n} {b:.0f}->{e:.0f} (±{d:.1f} %)" for n, (b, e, d) in drift.items() if n != "api"
                    )
                )
                print(f"largest deviation: {worst[0]} ±{worst[1][2]:.1f} %")
                print(f"PostgreSQL's busy connections over the soak, on average: {waits.top()}")
            finally:
                stop_servers(servers, timeout=60)
                await conn.close()
                channel = await bench.runtime.broker.channel()
                for node in nodes:
                    await channel.queue_delete(node_queue_name(node, bench.runtime.settings.topology_prefix))
                await channel.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--per-process", type=int, default=20)
    parser.add_argument("--store-connections", type=int, default=4)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="WORKER_HEARTBEAT_SECONDS (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--every", type=float, default=30, help="seconds between fan-outs")
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--warmup-seconds", type=float, default=120)
    parser.add_argument("--start-timeout", type=float, default=300)
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(main(parse()))
