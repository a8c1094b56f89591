"""Shared fixtures: settings for a test, a unique RabbitMQ namespace, cleanup."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from executors.registry import ExecutableRegistry
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from tests.support.executables import EXECUTABLES
from tests.support.services import (
    RABBITMQ_URL,
    fresh_postgres_database,
    mongo_mode_description,
    require_rabbitmq,
)
from topology import build_topology


def pytest_report_header() -> str:
    return mongo_mode_description()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(mongo_mode_description())


@pytest.fixture
def topology_prefix() -> str:
    """A prefix that keeps this test's exchanges and queues apart from every other's."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def registry() -> ExecutableRegistry:
    """Reference executables (entry points) plus the test ones."""
    registry = ExecutableRegistry.discover()
    for cls in EXECUTABLES:
        registry.register(cls)
    return registry


@pytest.fixture
def make_settings(tmp_path: Path, topology_prefix: str) -> Callable[..., PlatformSettings]:
    """Settings for this test: its own SQLite file and topology prefix, fast outbox timings."""

    def make(**overrides: Any) -> PlatformSettings:
        values: dict[str, Any] = {
            "amqp_url": RABBITMQ_URL,
            "store_url": f"sqlite+aiosqlite:///{tmp_path}/tasks.db",
            "topology_prefix": topology_prefix,
            "outbox_interval_seconds": 0.1,
            "outbox_grace_seconds": 0.2,
            "outbox_lease_seconds": 5.0,
            "shutdown_grace_seconds": 5.0,
            "load_entry_points": True,
            # Authentication is tested on its own (tests/api/test_auth.py), which opts in.
            "auth": "disabled",
        }
        values.update(overrides)
        return PlatformSettings(**values)

    return make


@pytest.fixture
def make_runtime(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry
) -> Callable[..., Runtime]:
    """A runtime for this test; a consuming worker without relay unless told otherwise."""

    def make(*, role: str = "worker", consume: bool = True, relay: bool = False, **settings: Any) -> Runtime:
        return Runtime(make_settings(**settings), role=role, registry=registry, consume=consume, relay=relay)

    return make


@pytest.fixture
async def rabbitmq(
    topology_prefix: str, registry: ExecutableRegistry
) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A connection to the test broker; deletes this test's topology afterwards."""
    require_rabbitmq()
    connection = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        yield connection
    finally:
        topo = build_topology(registry.queues(), prefix=topology_prefix)
        await asyncio.wait_for(connection.connected.wait(), timeout=60)  # tests may cut or restart the broker
        channel = await connection.channel()
        for q in topo.queues:
            await channel.queue_delete(q.name)
        for x in topo.exchanges:
            await channel.exchange_delete(x.name)
        await connection.close()


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_postgres_database("tp_test") as url:
        yield url


@pytest.fixture
def own_postgres_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test alone, dropped after it: for tests whose worker
    processes run reapers and relays over every task in the store, or that count whole tables,
    and must not meet what other tests left in the session's database."""
    with fresh_postgres_database("tp_own") as url:
        yield url
