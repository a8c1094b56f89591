"""HTTP API benchmark (not a test): prints figures, asserts nothing.

Runs ``taskplatform api`` (``--api-processes``, default 1; authentication disabled) and
``taskplatform worker`` as processes on a store and topology of their own, and drives the API
from load-generator processes: ``hey`` when it is installed (closed-loop modes), else the
keep-alive HTTP/1.1 client below, in ``--generators`` processes so that the generator is not
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
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import (
    ROOT,
    CpuLedger,
    PgWatch,
    RawBaseline,
    Server,
    bench_platform,
    die_with_parent,
    pct,
    proc_cpu,
    raw_baseline,
    remove_sqlite,
    run_bench,
    server_env,
    start_server,
    stop_servers,
    wait_consumers,
    wait_http_ready,
)
from tests.bench.noop import BenchNoop

SUBMIT_PATH = "/api/v1/tasks"
READ_PATH = "/api/v1/tasks/{}"


def submit_body(n: int) -> dict[str, Any]:
    return {"task_type": "bench_noop", "parameters": {"n": n}}


# ---------------------------------------------------------------- a keep-alive HTTP/1.1 client
class HttpConnection:
    """One HTTP/1.1 keep-alive connection, a request at a time. Far cheaper per request than
    httpx (a few tens of µs), so that a generator process is not what limits the figures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = False
        self.reconnects = 0

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._used = False

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and read its whole answer: (status, body). A kept-alive connection
        the server closed meanwhile (its idle time-out) is reopened and the request sent again,
        once, if no byte of an answer had come."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = head.encode() + b"\r\n" + (body or b"")
        for again in (False, True):
            if self._writer is None:
                await self.open()
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(data)
                raw = await self._reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                stale = self._used and not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial)
                await self.close()
                if again or not stale:
                    raise
                self.reconnects += 1
        return await self._answer(raw)

    async def _answer(self, raw: bytes) -> tuple[int, bytes]:
        assert self._reader is not None
        status = int(raw[9:12])
        length, chunked, close = None, False, False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while size := int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append((await self._reader.readexactly(size + 2))[:-2])
            await self._reader.readuntil(b"\r\n")
            content = b"".join(parts)
        elif length is not None:
            content = await self._reader.readexactly(length)
        else:
            content, close = await self._reader.read(), True
        self._used = True
        if close:
            await self.close()
        return status, content


# ---------------------------------------------------------------- one load-generator process
@dataclass
class Tally:
    """What one generator process saw: latencies (ms) and status counts per kind of request."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"read": [], "write": []})
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: {"read": Counter(), "write": Counter()})
    accepted: int = 0
    sent: int = 0
    unfinished: int = 0
    lag_max_ms: float = 0.0

    def record(self, kind: str, ms: float, status: str) -> None:
        self.latencies[kind].append(ms)
        self.statuses[kind][status] += 1


def accepted_in(status: int, body: bytes, tasks: int) -> int:
    """Tasks a submission answer accepted: 1 for a single one (200, 201, 202); for a bulk one
    the items of its answer's result list that carry a ``task_id``."""
    if status >= 300:
        return 0
    if tasks == 1:
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        return tasks
    items = (
        answer if isinstance(answer, list) else next((v for v in answer.values() if isinstance(v, list)), [])
    )
    return sum(1 for item in items if isinstance(item, dict) and "task_id" in item) or tasks


class Generator:
    """The requests one generator process sends, as its spec (a JSON object) says."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rng = random.Random(spec["index"])  # noqa: S311
        self.tally = Tally()
        self.ids: list[str] = spec.get("ids") or []
        self.next_n = spec["index"] * 1_000_000_000
        self.left: int | None = spec.get("count")  # tasks still to submit (count mode)
        bulk = spec.get("bulk")
        self.bulk_path: str | None = bulk["path"] if bulk else None
        self.bulk_key: str | None = bulk["key"] if bulk else None
        self.batch: int = bulk["batch"] if bulk else 1

    def next_request(self) -> tuple[str, str, str, bytes | None, int] | None:
        """(kind, method, path, body, tasks) of the next request; None when a count is done."""
        if self.rng.random() < self.spec["read_share"]:
            return "read", "GET", READ_PATH.format(self.rng.choice(self.ids)), None, 0
        tasks = self.batch
        if self.left is not None:
            if self.left <= 0:
                return None
            tasks = min(tasks, self.left)
            self.left -= tasks
        first, self.next_n = self.next_n, self.next_n + tasks
        if self.bulk_path is None:
            return "write", "POST", SUBMIT_PATH, json.dumps(submit_body(first)).encode(), 1
        items = [submit_body(first + i) for i in range(tasks)]
        body = json.dumps(items if self.bulk_key is None else {self.bulk_key: items}).encode()
        return "write", "POST", self.bulk_path, body, tasks

    async def send(
        self, conn: HttpConnection, request: tuple[str, str, str, bytes | None, int], since: float
    ) -> None:
        kind, method, path, body, tasks = request
        self.tally.sent += 1
        try:
            status, answer = await conn.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.tally.record(kind, (time.perf_counter() - since) * 1000, f"error:{type(exc).__name__}")
            await asyncio.sleep(0.05)  # a server that refuses connections: do not spin
            return
        self.tally.record(kind, (time.perf_counter() - since) * 1000, str(status))
        if kind == "write":
            self.tally.accepted += accepted_in(status, answer, tasks)

    async def closed_loop(self, conn: HttpConnection, deadline: float | None) -> None:
        """Request after request on one connection until the deadline (or the count is done)."""
        while deadline is None or time.perf_counter() < deadline:
            request = self.next_request()
            if request is None:
                return
            await self.send(conn, request, time.perf_counter())

    async def open_loop(self, conns: list[HttpConnection], start: float, duration: float) -> None:
        """This process's share of the fixed schedule: request i of generator k of G leaves at
        ``start + (k + i * G) / rate``, on the next free connection; latency from that time."""
        rate = self.spec["rate"] / self.spec["generators"]
        offset = self.spec["index"] / self.spec["rate"]
        idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for conn in conns:
            idle.put_nowait(conn)
        pending: dict[asyncio.Task[None], tuple[str, float]] = {}

        async def one(request: tuple[str, str, str, bytes | None, int], intended: float) -> None:
            conn = await idle.get()
            try:
                await self.send(conn, request, intended)
            finally:
                idle.put_nowait(conn)

        i = 0
        while (intended := start + offset + i / rate) < start + duration:
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.tally.lag_max_ms = max(self.tally.lag_max_ms, (time.perf_counter() - intended) * 1000)
            request = self.next_request()
            assert request is not None
            task = asyncio.create_task(one(request, intended))
            pending[task] = (request[0], intended)
            task.add_done_callback(lambda t: pending.pop(t, None))
            i += 1
        if pending:
            _, late = await asyncio.wait(list(pending), timeout=self.spec["drain"])
            now = time.perf_counter()
            self.tally.unfinished = len(late)
            for task in late:
                # Never answered: counted at their lower bound, so the tail is not flattered.
                kind, intended = pending[task]
                self.tally.record(kind, (now - intended) * 1000, "unanswered")
                task.cancel()


async def generator_process() -> None:
    """The ``--child`` side: read the spec (one JSON line on stdin), open the connections, say
    ``ready``, read the start time (a wall-clock line), run, print the tally (one JSON line)."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    gen = Generator(spec)
    conns = [HttpConnection(spec["host"], spec["port"]) for _ in range(spec["connections"])]
    for conn in conns:
        await conn.open()
    print("ready", flush=True)
    start_wall = float(await loop.run_in_executor(None, sys.stdin.readline))
    await asyncio.sleep(max(0.0, start_wall - time.time()))
    cpu_before, start = proc_cpu_self(), time.perf_counter()
    duration: float | None = spec.get("duration")
    if spec["open_loop"]:
        assert duration is not None
        await gen.open_loop(conns, start, duration)
    else:
        deadline = start + duration if duration is not None else None
        await asyncio.gather(*(gen.closed_loop(conn, deadline) for conn in conns))
    elapsed = time.perf_counter() - start
    cpu = proc_cpu_self() - cpu_before
    for conn in conns:
        await conn.close()
    t = gen.tally
    out = {
        "latencies": t.latencies,
        "statuses": {k: dict(v) for k, v in t.statuses.items()},
        "accepted": t.accepted,
        "sent": t.sent,
        "unfinished": t.unfinished,
        "lag_max_ms": t.lag_max_ms,
        "reconnects": sum(c.reconnects for c in conns),
        "elapsed_s": elapsed,
        "cpu_s": cpu,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def proc_cpu_self() -> float:
    return proc_cpu(os.getpid())


# ---------------------------------------------------------------- the parent side of the load
@dataclass
class LoadRun:
    """The merged tallies of every generator process, the load's wall time, and the CPU each
    process group spent meanwhile."""

    latencies: dict[str, list[float]]
    statuses: dict[str, Counter[str]]
    accepted: int
    sent: int
    unfinished: int
    lag_max_ms: float
    reconnects: int
    elapsed_s: float
    cpu: dict[str, float]

    def count(self, kind: str) -> int:
        return len(self.latencies[kind])

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())


async def run_generators(
    base: str,
    *,
    groups: dict[str, list[int]],
    generators: int,
    connections: int,
    duration: float | None = None,
    count: int | None = None,
    read_share: float = 0.0,
    ids: list[str] | None = None,
    rate: float | None = None,
    bulk: BulkRoute | None = None,
    drain: float = 30.0,
    timeout: float = 900.0,
) -> LoadRun:
    """Drive the API at ``base`` from ``generators`` processes with ``connections`` in all:
    closed loop for ``duration`` seconds or until ``count`` tasks are submitted, or open loop
    at ``rate`` requests/s for ``duration``. ``groups`` (name → pids) are the processes whose
    CPU to account; the generators are added as ``load generator``."""
    host, port = base.removeprefix("http://").split(":")
    procs: list[asyncio.subprocess.Process] = []
    try:
        for index in range(generators):
            share = connections // generators + (1 if index < connections % generators else 0)
            spec = {
                "index": index,
                "generators": generators,
                "host": host,
                "port": int(port),
                "connections": max(1, share),
                "duration": duration,
                "count": None if count is None else count // generators + (index < count % generators),
                "read_share": read_share,
                "ids": ids or [],
                "rate": rate,
                "open_loop": rate is not None,
                "bulk": None if bulk is None else {"path": bulk.path, "key": bulk.key, "batch": bulk.batch},
                "drain": drain,
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.bench.bench_http",
                "--child",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
                preexec_fn=die_with_parent,
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"a load generator did not start (said {line[:200]!r})")
        ledger = CpuLedger({**groups, "load generator": [p.pid for p in procs]})
        start = time.time() + 0.3
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start}\n".encode())
            await proc.stdin.drain()
        await asyncio.sleep(start - time.time())
        before = ledger.snapshot()  # the generators' CPU: each measures its own window (below)
        lines = await asyncio.wait_for(
            asyncio.gather(*(p.stdout.readline() for p in procs if p.stdout)), timeout
        )
        spent = CpuLedger.spent(before, ledger.snapshot())
        if not all(lines):
            codes = [p.returncode for p in procs]
            raise RuntimeError(f"a load generator exited without its tally (exit codes {codes})")
        results = [json.loads(line) for line in lines]
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
    spent["load generator"] = sum(r["cpu_s"] for r in results)
    merged: dict[str, list[float]] = {"read": [], "write": []}
    statuses: dict[str, Counter[str]] = {"read": Counter(), "write": Counter()}
    for r in results:
        for kind in merged:
            merged[kind].extend(r["latencies"][kind])
            statuses[kind].update(r["statuses"][kind])
    return LoadRun(
        merged,
        statuses,
        accepted=sum(r["accepted"] for r in results),
        sent=sum(r["sent"] for r in results),
        unfinished=sum(r["unfinished"] for r in results),
        lag_max_ms=max(r["lag_max_ms"] for r in results),
        reconnects=sum(r["reconnects"] for r in results),
        elapsed_s=max(r["elapsed_s"] for r in results),
        cpu=spent,
    )


# ---------------------------------------------------------------- hey, when installed
@dataclass
class HeyRun:
    """What ``hey`` printed: requests/s, latency percentiles (ms), status counts, and the CPU
    spent meanwhile."""

    total: int
    per_s: float
    percentiles: dict[int, float]
    statuses: Counter[str]
    errors: int
    cpu: dict[str, float]


def parse_hey(text: str) -> tuple[float, dict[int, float], Counter[str], int]:
    """Requests/s, latency percentiles in ms, status code counts and error count from hey's
    report."""
    per_s = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    percentiles = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", text)}
    statuses: Counter[str] = Counter(
        {code: int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    )
    errors_part = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors_part))
    return per_s, percentiles, statuses, errors


async def run_hey(
    hey: str, url: str, *, clients: int, seconds: float, body: bytes | None, groups: dict[str, list[int]]
) -> HeyRun:
    argv = [hey, "-z", f"{seconds}s", "-c", str(clients)]
    if body is not None:
        argv += ["-m", "POST", "-T", "application/json", "-d", body.decode()]
    proc = await asyncio.create_subprocess_exec(
        *argv, url, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent
    )
    try:
        ledger = CpuLedger({**groups, "load generator (hey)": [proc.pid]})
        before = ledger.snapshot()
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
        spent = CpuLedger.spent(before, ledger.snapshot())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    per_s, percentiles, statuses, errors = parse_hey(text)
    return HeyRun(sum(statuses.values()) + errors, per_s, percentiles, statuses, errors, spent)


# ---------------------------------------------------------------- the bulk route, if the API has one
@dataclass(frozen=True)
class BulkRoute:
    """A bulk submission route found in the API's OpenAPI document: its path, the body's list
    property (None: the body is the list itself) and how many tasks to send per request."""

    path: str
    key: str | None
    batch: int


async def find_bulk_route(base: str, batch: int) -> BulkRoute | None:
    """``POST /api/v1/tasks/bulk`` (or another bulk route under /api/v1/tasks) as /openapi.json
    describes it, its batch capped at the body's ``maxItems``; None if the API has none."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        document = (await client.get("/openapi.json")).json()
    schemas = document.get("components", {}).get("schemas", {})

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    for path, operations in document.get("paths", {}).items():
        if not (path.startswith(SUBMIT_PATH) and "bulk" in path and "{" not in path and "post" in operations):
            continue
        content = operations["post"].get("requestBody", {}).get("content", {}).get("application/json", {})
        body = resolve(content.get("schema", {}))
        if body.get("type") == "array":
            return BulkRoute(path, None, min(batch, body.get("maxItems", batch)))
        for name, prop in body.get("properties", {}).items():
            prop = resolve(prop)
            if prop.get("type") == "array":
                return BulkRoute(path, name, min(batch, prop.get("maxItems", batch)))
    return None


# ---------------------------------------------------------------- the platform under test
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
    kind = "read" if reads else "write"
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
    return run2.accepted


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
    if sys.argv[1:] == ["--child"]:
        run_bench(generator_process())
    else:
        run_bench(main(parse_args()))


if __name__ == "__main__":
    run_main()
