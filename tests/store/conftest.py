"""Store fixtures: one contract, every backend.

``store`` is parametrized over the in-memory store, SQLite, PostgreSQL and MongoDB. MongoDB runs against a
real server when ``TASKPLATFORM_TEST_MONGODB_URL`` is set, in a testcontainers container
when a Docker engine answers, and otherwise against the in-process emulation; the test
id and the report header say which.

``TASKPLATFORM_TEST_STORE_MAX_CONNECTIONS`` (e.g. ``2``, the smallest allowed) runs the SQL and
MongoDB stores at that connection budget instead of the default: the contract must hold there too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from taskplatform.store import DEFAULT_MAX_CONNECTIONS, BaseTaskStore
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.sql import SqlTaskStore
from tests.support.mongo_emulation import AsyncEmulatedDatabase
from tests.support.services import MONGO_MODE, MONGODB_URL

#: Connections each SQL or MongoDB store of the contract may hold (STORE_MAX_CONNECTIONS).
MAX_CONNECTIONS = int(os.environ.get("TASKPLATFORM_TEST_STORE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS))


@pytest.fixture(scope="session")
def mongodb_url() -> Iterator[str | None]:
    """URL of a real MongoDB (env or container), or None for the emulation."""
    if MONGO_MODE == "real":
        yield MONGODB_URL
    elif MONGO_MODE == "container":
        from testcontainers.mongodb import MongoDbContainer

        with MongoDbContainer("mongo:7") as container:
            yield container.get_connection_url()
    else:
        yield None


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "postgresql",
        pytest.param(f"mongodb-{MONGO_MODE}", marks=pytest.mark.mongodb),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseTaskStore]:
    backend: str = request.param
    s: BaseTaskStore
    if backend == "memory":
        s = MemoryTaskStore()
    elif backend == "sqlite":
        s = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db", max_connections=MAX_CONNECTIONS)
    elif backend == "postgresql":
        url = request.getfixturevalue("postgres_database_url")
        s = SqlTaskStore(url, max_connections=MAX_CONNECTIONS)
    else:
        url = request.getfixturevalue("mongodb_url")
        if url is None:
            s = MongoTaskStore("mongodb://emulated/taskplatform_test", database=AsyncEmulatedDatabase())
        else:
            parts = urlsplit(url)
            db_name = f"tp_test_{uuid.uuid4().hex[:12]}"
            s = MongoTaskStore(
                urlunsplit(parts._replace(path=f"/{db_name}")), max_connections=MAX_CONNECTIONS
            )
    await s.open()
    if isinstance(s, SqlTaskStore) and backend == "postgresql":
        async with s.engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(
                text(
                    "TRUNCATE tasks, task_rollups, dead_letters, dead_letter_audit,"
                    " dead_letter_audit_targets, rate_limits, workers"
                )
            )
    try:
        yield s
    finally:
        if isinstance(s, MongoTaskStore) and backend != "mongodb-emulated":
            await s._db.client.drop_database(s._db.name)
        await s.close()
