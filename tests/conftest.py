"""Shared fixtures: settings for a test, a unique RabbitMQ namespace, cleanup."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.executables import EXECUTABLES
from tests.support.garbage import collect_garbage_or_fail
from tests.support.rabbit_node import RabbitNode
from tests.support.server import sweep_prefixes
from tests.support.services import (
    RABBITMQ_URL,
    DisruptableBroker,
    delete_topology,
    fresh_postgres_database,
    mongo_mode_description,
    open_disruptable_broker,
    require_rabbitmq,
)
from topology import build_topology

# Every worker node declares a queue of its own, named by its (random) node id, which no sweep by
# prefix can name: the broker deletes it once it has had no consumer for this long (the default
# is a week). The worker processes the tests start inherit it.
os.environ.setdefault("TASKPLATFORM_NODE_QUEUE_EXPIRES_SECONDS", "60")

#: RabbitMQ nodes this session started for its disruptive tests (reported at the end).
_OWN_NODES: list[RabbitNode] = []
#: Every topology prefix handed out (``topology_prefix``): swept after each module.
_HANDED_OUT: list[str] = []


def pytest_report_header() -> str:
    return mongo_mode_description()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(mongo_mode_description())
    for node in _OWN_NODES:
        terminalreporter.write_line(
            f"disruptive broker tests: a RabbitMQ node of their own, {node.name} on 127.0.0.1:"
            f"{node.amqp_port}, started in {node.startup_seconds:.1f} s"
        )


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_unclosed_by_the_session() -> Iterator[None]:
    """After every other session fixture (they are set up later, so torn down earlier)."""
    yield
    collect_garbage_or_fail("the test session (its session-scoped fixtures)")


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_unclosed_by_the_module(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    collect_garbage_or_fail(f"the tests of {request.module.__name__}")


@pytest.fixture(scope="module", autouse=True)
def _no_queues_left_by_the_module() -> Iterator[None]:
    """Delete whatever the module's tests left on the shared broker under their prefixes (worker
    processes they started declare whole topologies); each quorum queue holds RabbitMQ file
    handles, and a broker out of them stops answering new connections."""
    first = len(_HANDED_OUT)
    yield
    if len(_HANDED_OUT) > first:
        asyncio.run(sweep_prefixes(_HANDED_OUT[first:]))


@pytest.fixture
def topology_prefix() -> str:
    """A prefix that keeps this test's exchanges and queues apart from every other's."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    _HANDED_OUT.append(prefix)
    return prefix


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
        await connection.close()
        await delete_topology(RABBITMQ_URL, build_topology(registry.queues(), prefix=topology_prefix))


@pytest.fixture(scope="session")
def disruptable_broker() -> Iterator[DisruptableBroker]:
    """A broker the tests may stop and cut off (never the shared one): a RabbitMQ node this
    session starts on free ports, unless ``TASKPLATFORM_TEST_BROKER_DISRUPTABLE=1`` says the
    configured broker may be disrupted. Started on first use, stopped at the session's end."""
    with open_disruptable_broker(_OWN_NODES) as broker:
        yield broker


@pytest.fixture
async def disrupted_rabbitmq(
    disruptable_broker: DisruptableBroker, topology_prefix: str, registry: ExecutableRegistry
) -> AsyncIterator[DisruptableBroker]:
    """``disruptable_broker`` for one test; deletes the test's topology from it afterwards."""
    yield disruptable_broker
    await delete_topology(disruptable_broker.url, build_topology(registry.queues(), prefix=topology_prefix))


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
