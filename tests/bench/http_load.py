"""The HTTP load of the API benchmarks: a keep-alive HTTP/1.1 client, load-generator processes
(closed and open loop, their tallies merged), ``hey`` when it is installed, and the bulk route
found at run time. ``bench_http``, ``bench_soak`` and ``bench_scaling`` drive the API with it.

A generator process is ``python -m tests.bench.http_load``: it reads its spec (one JSON line) on
stdin and prints its tally (one JSON line) on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.bench.generators import drive_generators
from tests.bench.harness import die_with_parent, run_bench
from tests.bench.procfs import CpuLedger, proc_cpu

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
    """A generator process (``python -m tests.bench.http_load``): read the spec (one JSON line
    on stdin), open the connections, say ``ready``, read the start time (a wall-clock line),
    run, print the tally (one JSON line)."""
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
    specs = []
    for index in range(generators):
        share = connections // generators + (1 if index < connections % generators else 0)
        specs.append(
            {
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
        )
    results, spent = await drive_generators("tests.bench.http_load", specs, groups=groups, timeout=timeout)
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


if __name__ == "__main__":
    run_bench(generator_process())
