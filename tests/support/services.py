"""Where the test services are, and what to do when one is missing.

A missing service skips the tests that need it, loudly, on a developer machine and
fails them under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

RABBITMQ_URL = os.environ.get("TASKPLATFORM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "TASKPLATFORM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
MONGODB_URL = os.environ.get("TASKPLATFORM_TEST_MONGODB_URL")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str, default_port: int) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"{host}:{port} unreachable ({exc})"


def require(service: str, url: str, default_port: int) -> None:
    """Skip (locally) or fail (CI) unless ``service`` answers at ``url``."""
    problem = _reachable(url, default_port)
    if problem is None:
        return
    message = f"{service} is required: {problem}; start it (see README 'Services')"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def require_rabbitmq() -> None:
    require("RabbitMQ", RABBITMQ_URL, 5672)


def require_postgres() -> None:
    require("PostgreSQL", POSTGRES_URL, 5432)


def _docker_engine_available() -> bool:
    sock = Path("/var/run/docker.sock")
    if not sock.exists() and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker  # type: ignore[import-untyped]  # noqa: F401  (installed with testcontainers)

        return bool(docker.from_env().ping())
    except Exception:
        return False


def mongo_mode() -> str:
    if MONGODB_URL:
        return "real"
    if _docker_engine_available():
        return "container"
    return "emulated"


MONGO_MODE = mongo_mode()


def mongo_mode_description() -> str:
    where = {
        "real": f"a real server at TASKPLATFORM_TEST_MONGODB_URL={MONGODB_URL}",
        "container": "a MongoDB container started by testcontainers",
        "emulated": "the in-process emulation (mongomock behind an async adapter); "
        "set TASKPLATFORM_TEST_MONGODB_URL to run it against a real server",
    }[MONGO_MODE]
    return f"store contract, MongoDB backend: {where}"


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped on exit.

    Runs its admin statements on their own thread and loop, so it also works when entered
    from inside a running event loop (an async test's fixture).
    """
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run_sync(sql: str) -> None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run(sql)).result()

    run_sync(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        run_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
