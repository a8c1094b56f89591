"""What the benchmarks share: a store and topology of their own, the submitting runtime, worker
processes with the same settings, and cleaning all of it up; for the benchmarks that run the
platform as processes, the servers (started, known ready, stopped or killed), and the raw
aio-pika baseline every figure is compared with. What they read from /proc is in ``procfs``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

from taskplatform.runtime import Runtime, build_platform_topology, build_registry
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import DEMO_MODULE, ExecutableRegistry
from tests.bench.procfs import PG_ADMIN, proc_cpu, proc_tree
from topology import Topology

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("TASKPLATFORM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def make_pg_database() -> tuple[str, str]:
    name = f"tp_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        worker_env = {**os.environ, **env, "TASKPLATFORM_NODE_ID": f"bench-worker-{i}"}
        procs.append(
            subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "taskplatform.cli", "worker"],
                cwd=ROOT,
                env=worker_env,
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


@dataclass(frozen=True)
class BenchPlatform:
    """The submitting runtime (started) and the environment worker processes need to join it."""

    runtime: Runtime
    env: dict[str, str]


@contextlib.asynccontextmanager
async def bench_platform(
    store: str, registry: ExecutableRegistry, executor_module: str, **settings: Any
) -> AsyncIterator[BenchPlatform]:
    """A fresh PostgreSQL database (``store="postgresql"``), SQLite file (``"sqlite"``) or the
    store URL given; a topology prefix of its own; the submitting runtime, started (it migrates
    the store and declares the topology); and the environment for worker processes running
    ``executor_module`` with the same ``settings``. Everything is deleted afterwards."""
    pg_name = None
    if store == "postgresql":
        pg_name, store_url = await make_pg_database()
    elif store == "sqlite":
        store_url = f"sqlite+aiosqlite:///{ROOT}/var/bench-{uuid.uuid4().hex[:6]}.db"
    else:
        store_url = store
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    env = {
        "TASKPLATFORM_AMQP_URL": AMQP_URL,
        "TASKPLATFORM_STORE_URL": store_url,
        "TASKPLATFORM_TOPOLOGY_PREFIX": prefix,
        "TASKPLATFORM_EXECUTOR_MODULES": f'["{executor_module}"]',
        "TASKPLATFORM_LOAD_ENTRY_POINTS": "false",
        "TASKPLATFORM_OUTBOX_RELAY_ENABLED": "false",
        "TASKPLATFORM_LOG_LEVEL": "WARNING",
        **{f"TASKPLATFORM_{name.upper()}": str(value) for name, value in settings.items()},
    }
    platform_settings = PlatformSettings(
        **{
            "amqp_url": AMQP_URL,
            "store_url": store_url,
            "topology_prefix": prefix,
            "outbox_relay_enabled": False,
            "load_entry_points": False,
            "node_id": "bench-submitter",
            **settings,
        }
    )
    runtime = Runtime(platform_settings, role="bench", registry=registry, relay=False)
    await runtime.start(wait_for_broker=True)
    try:
        yield BenchPlatform(runtime, env)
    finally:
        channel = await runtime.broker.channel()
        for q in runtime.topology.queues:
            await channel.queue_delete(q.name)
        for x in runtime.topology.exchanges:
            await channel.exchange_delete(x.name)
        await runtime.stop(grace=1)
        if pg_name:
            await drop_pg_database(pg_name)


# ---------------------------------------------------------------- server processes and /proc figures
# Used by the benchmarks that run the platform as real processes (bench_http, bench_idle,
# bench_soak, bench_scaling): start ``taskplatform api|worker|dev``, know when each is ready, read
# what each costs from /proc, and stop and delete all of it, whatever happened.


def server_env(base: dict[str, str], **settings: object) -> dict[str, str]:
    """This process's environment without any ``TASKPLATFORM_*`` variable (a developer's own
    settings must not leak into a benchmark), ``base`` (``BenchPlatform.env``) and ``settings``
    (``auth="disabled"`` → ``TASKPLATFORM_AUTH=disabled``; None removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TASKPLATFORM_")}
    env.update(base)
    for name, value in settings.items():
        key = f"TASKPLATFORM_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1)."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A ``taskplatform`` server process, its log file and (api, dev) its base URL."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    base: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else "(no log)"


#: Set (a directory) to run the servers under ``tests/bench/memprobe.py`` (``bench_soak --probe``).
MEMPROBE_ENV = "BENCH_MEMPROBE_DIR"


def start_server(command: str, env: dict[str, str], log_dir: Path, *, name: str | None = None) -> Server:
    """``taskplatform <command>`` (api, dev, grpc, worker) as a child process, output to a log file
    in ``log_dir``; api, dev and grpc listen on free ports of 127.0.0.1."""
    name = name or command
    argv = [sys.executable, "-m", "taskplatform.cli", command]
    probe_dir = env.get(MEMPROBE_ENV)
    if probe_dir:  # under tests/bench/memprobe.py: a report per SIGUSR1
        argv[1:1] = ["-m", "tests.bench.memprobe", str(Path(probe_dir) / f"{name}.txt")]
    base = None
    if command in ("api", "dev"):
        port = free_port()
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
    if command == "dev":  # its gRPC door too, on a port of its own
        argv += ["--grpc-port", str(free_port())]
    if command == "grpc":
        port = free_port()
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        base = f"127.0.0.1:{port}"  # a gRPC target, not a URL
    log = log_dir / f"{name}.log"
    env = {**env, "TASKPLATFORM_NODE_ID": f"bench-{name}"}
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    return Server(name, process, log, base)


def die_with_parent() -> None:
    """In a child between fork and exec: SIGTERM it when the benchmark process dies, however
    it dies (a SIGKILL or a crash leaves no server behind)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run_bench(main: Coroutine[Any, Any, None]) -> None:
    """Run a benchmark's ``main`` on uvloop (as the servers run); SIGTERM cancels it like
    Ctrl-C does, so its ``finally`` blocks stop the processes and delete the store and topology."""
    import uvloop

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(guarded())
        except asyncio.CancelledError:
            print(
                "stopped by SIGTERM: what the benchmark had started is stopped and deleted", file=sys.stderr
            )
            raise SystemExit(143) from None


def stop_servers(servers: list[Server], timeout: float = 30) -> None:
    """SIGTERM to every server, then SIGKILL to those still running after ``timeout`` seconds
    (together); all reaped."""

    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    deadline = time.monotonic() + timeout
    for server in servers:
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"warning: {server.name} (pid {server.pid}) did not stop in {timeout:.0f} s: killed")
            for pid in reversed(proc_tree(server.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            server.process.wait()


class NotReady(RuntimeError):
    """A server exited, or was not ready in time; the message has its log's tail."""


async def wait_http_ready(server: Server, *, timeout: float = 90, processes: int = 1) -> None:
    """Until ``/readyz`` answers 200 (and, for an API of several processes, uvicorn has started
    all of them): the API's store is open, its broker connected and its topology declared."""

    assert server.base is not None
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.base, timeout=3) as client:
        while True:
            if server.process.poll() is not None:
                raise NotReady(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    if processes == 1 or len(proc_tree(server.pid)) > processes:
                        break
            if time.monotonic() > deadline:
                raise NotReady(f"{server.name} not ready within {timeout:.0f} s:\n{server.log_tail()}")
            await asyncio.sleep(0.2)
    if processes > 1:
        await asyncio.sleep(1.0)  # the other processes' lifespans (no readiness of their own to ask)


async def consumer_count(queue: str) -> int:
    """Consumers on ``queue`` now (a passive declare; 0 if it does not exist yet)."""

    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        return int(declared.declaration_result.consumer_count or 0)
    finally:
        await connection.close()


async def wait_consumers(queue: str, count: int, servers: list[Server], *, timeout: float = 90) -> None:
    """Until ``queue`` has ``count`` consumers: a worker has no readiness endpoint, but it
    consumes its work queues (the highest priority level first, level 0 last) once its store is
    open and its topology declared."""

    deadline = time.monotonic() + timeout
    while (seen := await consumer_count(queue)) < count:
        for server in servers:
            if server.process.poll() is not None:
                raise NotReady(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name}\n{s.log_tail(1500)}" for s in servers)
            raise NotReady(f"{seen} of {count} consumers on {queue} after {timeout:.0f} s:\n{logs}")
        await asyncio.sleep(0.2)


async def queue_ready(queue: str, connection: Any) -> int:
    """Messages ready on ``queue`` (a passive declare on ``connection``; unacked ones are not
    counted)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


def served_topology(env: dict[str, str], *, demo: bool = False) -> Topology:
    """The topology a server started with ``env`` declares (``demo``: ``dev`` adds the demo
    executables)."""

    modules = json.loads(env.get("TASKPLATFORM_EXECUTOR_MODULES", "[]"))
    settings = PlatformSettings(
        amqp_url=AMQP_URL,
        topology_prefix=env["TASKPLATFORM_TOPOLOGY_PREFIX"],
        executor_modules=[*modules, DEMO_MODULE] if demo else modules,
        load_entry_points=env.get("TASKPLATFORM_LOAD_ENTRY_POINTS", "true") == "true",
    )
    return build_platform_topology(settings, build_registry(settings))


async def delete_topology(topology: Topology) -> None:
    """Delete ``topology``'s queues and exchanges (deleting what is not there is a no-op); on a
    broker fault print a warning instead."""

    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=10)
        try:
            channel = await connection.channel()
            for queue in topology.queues:
                await channel.queue_delete(queue.name)
            for exchange in topology.exchanges:
                await channel.exchange_delete(exchange.name)
        finally:
            await connection.close()
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"warning: deleting the topology {topology.work_exchange} failed ({exc!r}); its queues stay")


def remove_sqlite(store_url: str) -> None:
    """Delete a SQLite store's file, its -wal/-shm companions and the migration's lock file
    (``bench_platform`` leaves them all)."""
    if not store_url.startswith("sqlite"):
        return
    path = store_url.split(":///", 1)[1]
    for suffix in ("", "-wal", "-shm", "-journal", ".migrate.lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


# ---------------------------------------------------------------- the raw aio-pika baseline


@dataclass(frozen=True)
class RawBaseline:
    """The raw aio-pika loop of ``bench_pipeline`` (confirmed publishes to a quorum queue, a
    manual-ack consumer, one process) measured in this run: its rate, the client CPU it spent
    per message, and one message's confirmed publish → delivery time when sent one at a time.
    Every figure of the process benchmarks is printed as a ratio to one of these."""

    msgs_per_s: float
    cpu_ms_per_msg: float
    rtt_p50_ms: float
    rtt_p99_ms: float

    def line(self) -> str:
        return (
            f"raw aio-pika loop (confirmed publish -> quorum queue -> manual ack, one process): "
            f"{self.msgs_per_s:,.0f} msgs/s, {self.cpu_ms_per_msg:.3f} ms client CPU per msg; "
            f"one at a time, publish -> delivery p50 {self.rtt_p50_ms:.2f} ms, p99 {self.rtt_p99_ms:.2f} ms; "
            f"cores: {os.cpu_count()}"
        )

    def rate(self, per_s: float) -> str:
        """``per_s`` beside the raw rate, as a ratio."""
        return f"{per_s:,.0f}/s (x{per_s / self.msgs_per_s:.3f} of raw {self.msgs_per_s:,.0f} msgs/s)"

    def cpu(self, ms: float) -> str:
        """CPU ms per operation, and how many raw-loop messages that much CPU would carry."""
        return f"{ms:.3f} ms (x{ms / self.cpu_ms_per_msg:.1f} raw msg)"

    def latency(self, ms: float) -> str:
        """A latency, and its ratio to one raw publish → delivery (p50)."""
        return f"{ms:.2f} ms (x{ms / self.rtt_p50_ms:.1f} raw rtt)"


async def raw_roundtrip(n: int) -> tuple[float, float]:
    """p50 and p99 ms of one confirmed publish to a quorum queue until its delivery to a
    consumer on the same connection, messages sent one at a time."""

    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"bench.rtt.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        waiting: asyncio.Future[float] | None = None

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if waiting is not None and not waiting.done():
                waiting.set_result(time.perf_counter())

        tag = await queue.consume(on_message)
        times = []
        try:
            for _ in range(n):
                waiting = asyncio.get_running_loop().create_future()
                sent = time.perf_counter()
                await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=name)
                times.append((await asyncio.wait_for(waiting, 10) - sent) * 1000)
        finally:
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    return pct(times, 0.5), pct(times, 0.99)


async def raw_baseline(
    n: int = 10000, *, prefetch: int = 256, batch: int = 200, rtt_n: int = 300
) -> RawBaseline:
    """Run the raw loop (``bench_pipeline.raw_aio_pika``, ``n`` messages) and the one-at-a-time
    round trip in this process; run it with nothing else of the benchmark running."""
    from tests.bench.bench_pipeline import raw_aio_pika  # not at the top: that module imports this one

    before = proc_cpu(os.getpid())
    limit = 60 + n / 100  # a broker that accepts TCP but no longer answers AMQP would hang it
    try:
        raw = await asyncio.wait_for(raw_aio_pika(n, prefetch, batch), limit)
    except TimeoutError:
        raise RuntimeError(
            f"the raw aio-pika loop did not finish in {limit:.0f} s: does the broker answer? "
            "(rabbitmqctl eval 'file_handle_cache:info().'; scripts/services raises the limit)"
        ) from None
    cpu_ms = (proc_cpu(os.getpid()) - before) / n * 1000
    p50, p99 = await raw_roundtrip(rtt_n)
    return RawBaseline(raw["msgs_per_s"], cpu_ms, p50, p99)
