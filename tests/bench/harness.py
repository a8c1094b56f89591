"""What the benchmarks share: a store and topology of their own, the submitting runtime, worker
processes with the same settings, and cleaning all of it up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("TASKPLATFORM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN = os.environ.get("TASKPLATFORM_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


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
        amqp_url=AMQP_URL,
        store_url=store_url,
        topology_prefix=prefix,
        outbox_relay_enabled=False,
        load_entry_points=False,
        node_id="bench-submitter",
        **settings,
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
