"""The connection budget with real processes: 1 ``taskplatform api`` and 8 ``taskplatform worker``
on one fresh PostgreSQL database, at the default ``STORE_MAX_CONNECTIONS``, run a few hundred
tasks; the server never sees more than 9 × the budget of their connections, and no process more
than its budget (its sockets to PostgreSQL, read from /proc), so a default ``max_connections =
100`` keeps its headroom."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from taskplatform.client import TaskPlatformClient
from taskplatform.store import DEFAULT_MAX_CONNECTIONS
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.server import ROOT, delete_topology_now, free_port, log_tail, platform_env, wait_ready
from tests.support.services import POSTGRES_URL, RABBITMQ_URL, fresh_postgres_database, require_rabbitmq
from topology import Topology, build_topology

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

WORKERS = 8
TASKS = 300
POSTGRES_PORT = urlsplit(POSTGRES_URL).port or 5432


@dataclass
class Watched:
    """The most connections seen at once: in all (the server's view) and per process (its sockets);
    and the tasks completed so far."""

    total: int = 0
    by_pid: dict[int, int] = field(default_factory=dict)
    completed: int = 0


def _postgres_socket_inodes() -> set[str]:
    """Inodes of this host's established TCP connections to PostgreSQL's port."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == POSTGRES_PORT and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def _connections_of(pid: int, inodes: set[str]) -> int:
    """How many of ``inodes`` (PostgreSQL connections) process ``pid`` holds."""
    held = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def _topology(prefix: str) -> Topology:
    registry = ExecutableRegistry.discover(["tests.support.executables"])  # as the processes load them
    return build_topology(registry.queues(), prefix=prefix, priority_levels=1)


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database("tp_budget") as url:
        yield url


@pytest.fixture
def prefix() -> Iterator[str]:
    """This test's topology prefix; its queues and exchanges are deleted afterwards."""
    require_rabbitmq()
    prefix = f"cb{uuid.uuid4().hex[:8]}."
    yield prefix
    delete_topology_now(_topology(prefix))


Launch = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Starts ``taskplatform <command>`` processes; stops them all afterwards, even after a
    timeout: SIGTERM to each, SIGKILL to those still running 20 s later."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: str, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "taskplatform.cli", command, *args]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 20
    for process in started:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _workers_consuming(base: str, queue: str) -> bool:
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        queues = (await http.get("/readyz")).json().get("queues") or {}
    figures = queues.get(queue)
    return figures is not None and figures["consumers"] >= WORKERS


async def _watch(
    conn: asyncpg.Connection, database: str, pids: list[int], seen: Watched, stop: asyncio.Event
) -> None:
    """Until ``stop``: the platform's connections to ``database`` (``conn``'s own left out), in all
    and per process, their peaks in ``seen``; and the tasks completed."""
    while not stop.is_set():
        total = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
            database,
        )
        seen.total = max(seen.total, total)
        inodes = _postgres_socket_inodes()
        for pid in pids:
            seen.by_pid[pid] = max(seen.by_pid.get(pid, 0), _connections_of(pid, inodes))
        with contextlib.suppress(asyncpg.UndefinedTableError):  # not migrated yet
            seen.completed = await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'COMPLETED'")
        await asyncio.sleep(0.05)


async def test_one_api_and_eight_workers_stay_within_their_connection_budget_on_postgresql(
    database_url: str, prefix: str, launch: Launch, tmp_path: Path
) -> None:
    port = free_port()
    common = {
        "TASKPLATFORM_AMQP_URL": RABBITMQ_URL,
        "TASKPLATFORM_STORE_URL": database_url,
        "TASKPLATFORM_TOPOLOGY_PREFIX": prefix,
        "TASKPLATFORM_EXECUTOR_MODULES": "tests.support.executables",
        "TASKPLATFORM_PRIORITY_LEVELS": "1",
        "TASKPLATFORM_OUTBOX_INTERVAL_SECONDS": "0.2",
        "TASKPLATFORM_PROGRESS_INTERVAL_SECONDS": "0",  # every progress report a write
        "TASKPLATFORM_LOG_LEVEL": "WARNING",
    }
    database = database_url.rsplit("/", 1)[1]
    logs = {"api": tmp_path / "api.log", **{f"w{i}": tmp_path / f"worker-{i}.log" for i in range(WORKERS)}}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    seen, stop_watching = Watched(), asyncio.Event()
    probe = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    watcher: asyncio.Task[None] | None = None
    started = time.monotonic()
    try:
        processes["api"] = launch(
            "api",
            platform_env(**common, TASKPLATFORM_AUTH="disabled", TASKPLATFORM_NODE_ID="api"),
            logs["api"],
            *("--host", "127.0.0.1", "--port", str(port)),
        )
        for i in range(WORKERS):
            env = platform_env(**common, TASKPLATFORM_NODE_ID=f"w{i}")
            processes[f"w{i}"] = launch("worker", env, logs[f"w{i}"])
        pids = [p.pid for p in processes.values()]
        watcher = asyncio.create_task(_watch(probe, database, pids, seen, stop_watching))
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_ready, processes["api"], base, logs["api"], timeout=90)
        deadline = time.monotonic() + 90
        while not await _workers_consuming(base, f"{prefix}tasks.work.default"):
            dead = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
            assert not dead, f"processes exited: {dead}\n{log_tail(logs[next(iter(dead))])}"
            assert time.monotonic() < deadline, "the workers did not all consume within 90 s"
            await asyncio.sleep(0.2)
        ready = time.monotonic()

        async with TaskPlatformClient(base) as client:
            gate = asyncio.Semaphore(16)

            async def submit(i: int) -> str:
                async with gate:
                    if i % 4:
                        return await client.submit("test_noop", {"value": i, "sleep": 0.1})
                    return await client.submit("test_chatty", {"updates": 20, "pause": 0.01})

            ids = await asyncio.gather(*(submit(i) for i in range(TASKS)))
        assert len(set(ids)) == TASKS

        deadline = time.monotonic() + 60
        while seen.completed < TASKS:
            assert time.monotonic() < deadline, f"{seen.completed} of {TASKS} tasks completed within 60 s"
            assert not watcher.done(), "the watcher failed"
            await asyncio.sleep(0.2)
        finished = time.monotonic()
    finally:
        stop_watching.set()
        if watcher is not None:
            await watcher
        await probe.close()

    api_peak = seen.by_pid[processes["api"].pid]
    worker_peaks = [seen.by_pid[processes[f"w{i}"].pid] for i in range(WORKERS)]
    print(
        f"\n1 API + {WORKERS} workers at STORE_MAX_CONNECTIONS={DEFAULT_MAX_CONNECTIONS}: peak "
        f"{seen.total} connections on the server (bound {(WORKERS + 1) * DEFAULT_MAX_CONNECTIONS}); "
        f"per process: API {api_peak}, workers {worker_peaks}; {TASKS} tasks completed in "
        f"{finished - ready:.1f} s, {ready - started:.1f} s to start"
    )
    assert seen.total <= (WORKERS + 1) * DEFAULT_MAX_CONNECTIONS
    assert all(2 <= peak <= DEFAULT_MAX_CONNECTIONS for peak in [api_peak, *worker_peaks]), seen.by_pid
    assert seen.total >= 2 * (WORKERS + 1)  # every process held its store's connections meanwhile
