"""A ``taskplatform`` server process for a test: started, waited on until ready, stopped, and its
queues deleted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import aio_pika
import httpx

from taskplatform.tasks.registry import DEMO_MODULE, ExecutableRegistry
from tests.support.executables import EXECUTABLES
from tests.support.services import RABBITMQ_URL
from topology import Topology, build_topology

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def platform_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``TASKPLATFORM_*`` variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TASKPLATFORM_")}
    env.update(settings)
    return env


def log_tail(log: Path, size: int = 4000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_ready(
    process: subprocess.Popen[bytes],
    base: str,
    log: Path,
    *,
    timeout: float = 90,
    path: str = "/readyz",
    headers: Mapping[str, str] | None = None,
) -> None:
    """Until ``base`` + ``path`` answers 200 (``/healthz`` for a server whose broker is away on
    purpose); fails with the log's tail if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the server exited with {process.returncode}:\n{log_tail(log)}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}{path}", headers=headers, timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, (
            f"the server was not ready within {timeout:.0f} s:\n{log_tail(log)}"
        )
        time.sleep(0.2)


@contextlib.contextmanager
def serving(
    command: str,
    env: Mapping[str, str],
    log: Path,
    *,
    port: int | None = None,
    args: Iterable[str] = (),
    ready_timeout: float = 90,
    ready_path: str = "/readyz",
    ready_headers: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """``taskplatform <command>`` (``api`` or ``dev``) on 127.0.0.1, its output in ``log``; yields
    its base URL once /readyz answers, and stops it on exit."""
    port = port or free_port()
    argv = [sys.executable, "-m", "taskplatform.cli", command, "--host", "127.0.0.1", "--port", str(port)]
    if command == "dev":  # its gRPC door on a free port, so servers of concurrent tests never collide
        argv += ["--grpc-port", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [*argv, *args], cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, log, timeout=ready_timeout, path=ready_path, headers=ready_headers)
        yield base
    finally:
        stop(process)


def served_topology(prefix: str, *, demo: bool = True, test_executables: bool = True) -> Topology:
    """The topology a server with the reference executables (and the demo, and the test ones)
    declares under ``prefix``."""
    registry = ExecutableRegistry.discover([DEMO_MODULE] if demo else [])
    for cls in EXECUTABLES if test_executables else ():
        registry.register(cls)
    return build_topology(registry.queues(), prefix=prefix)


def delete_topology_now(topology: Topology, *, url: str = RABBITMQ_URL, timeout: float = 30) -> None:
    """Delete a server's queues and exchanges; on a failure or after ``timeout`` print a warning
    (the queues stay on the broker) instead of failing the test that used it."""

    async def delete() -> None:
        connection = await aio_pika.connect(url, timeout=10)
        try:
            channel = await connection.channel()
            for queue in topology.queues:
                await channel.queue_delete(queue.name)
            for exchange in topology.exchanges:
                await channel.exchange_delete(exchange.name)
        finally:
            await connection.close()

    try:
        asyncio.run(asyncio.wait_for(delete(), timeout=timeout))
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"\nwarning: deleting the topology {topology.work_exchange} failed ({exc!r}); its queues stay")


def _names_under(prefix: str) -> tuple[list[str], list[str]]:
    """Every queue and exchange a process of this suite may declare under ``prefix``: all queue
    groups at every priority level, both delay modes, the DLQ and the parking queue."""
    topology = served_topology(prefix)
    queues = {queue.name for queue in topology.queues}
    exchanges = {exchange.name for exchange in topology.exchanges}
    exchanges.add(build_topology({}, prefix=prefix, delay_mode="plugin").delay_exchange)
    return sorted(queues), sorted(exchanges)


async def sweep_prefixes(prefixes: Iterable[str], *, url: str = RABBITMQ_URL, timeout: float = 120) -> int:
    """Delete what tests may have left under ``prefixes`` (a worker process they started, a test
    that failed before its own cleanup); deleting what is not there is a no-op. Returns how many
    prefixes were swept; on a broker fault or after ``timeout`` it prints a warning instead."""
    prefixes = list(prefixes)
    if not prefixes:
        return 0

    async def sweep() -> None:
        connection = await aio_pika.connect(url, timeout=10)
        try:
            channel = await connection.channel()
            for prefix in prefixes:
                queues, exchanges = _names_under(prefix)
                for queue in queues:
                    await channel.queue_delete(queue)
                for exchange in exchanges:
                    await channel.exchange_delete(exchange)
        finally:
            await connection.close()

    try:
        await asyncio.wait_for(sweep(), timeout=timeout)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"\nwarning: sweeping the queues of {len(prefixes)} test prefixes failed ({exc!r})")
        return 0
    return len(prefixes)
