"""Where the test services are, and what to do when one is missing.

A missing service skips the tests that need it, loudly, on a developer machine and
fails them under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import asyncpg
import pytest

from taskplatform.settings import redact_url
from tests.support.rabbit_node import RabbitNode, RabbitNodeError, find_scripts
from topology import Topology


def _with_vhost(url: str, vhost: str | None) -> str:
    """``url`` with its virtual host replaced by ``vhost`` (when given)."""
    if not vhost:
        return url
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


#: The broker the suite uses (``TASKPLATFORM_TEST_AMQP_URL``), in the virtual host
#: ``TASKPLATFORM_TEST_AMQP_VHOST`` when that is set: tests declare uniquely prefixed queues
#: and exchanges in it and delete them, and never stop the broker or close others' connections.
RABBITMQ_URL = _with_vhost(
    os.environ.get("TASKPLATFORM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    os.environ.get("TASKPLATFORM_TEST_AMQP_VHOST"),
)
#: The broker of ``TASKPLATFORM_TEST_AMQP_URL`` may be disrupted (stopped, every connection
#: closed): the disruptive tests use it instead of starting a RabbitMQ node of their own.
_DISRUPTABLE = os.environ.get("TASKPLATFORM_TEST_BROKER_DISRUPTABLE", "")
BROKER_DISRUPTABLE = _DISRUPTABLE.lower() in {"1", "true", "yes"}
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


def missing(message: str) -> NoReturn:
    """Skip loudly on a developer machine, fail under ``CI=true``."""
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def require(service: str, url: str, default_port: int) -> None:
    """Skip (locally) or fail (CI) unless ``service`` answers at ``url``."""
    problem = _reachable(url, default_port)
    if problem is not None:
        missing(f"{service} is required: {problem}; start it (see docs/testing.md)")


def require_rabbitmq() -> None:
    require("RabbitMQ", RABBITMQ_URL, 5672)
    if vhost_of(RABBITMQ_URL) != "/" and (problem := _vhost_problem(RABBITMQ_URL)):
        missing(problem)  # a vhost of the suite's own, not created yet (checked once)


@functools.cache
def _vhost_problem(url: str) -> str | None:
    """Why the suite cannot connect to its virtual host (checked once per session), or None."""

    async def probe() -> None:
        connection = await aio_pika.connect(url, timeout=15)
        await connection.close()

    try:
        with ThreadPoolExecutor(1) as pool:  # works from inside a running event loop too
            pool.submit(asyncio.run, probe()).result()
    except Exception as exc:
        vhost = vhost_of(url)
        user = urlsplit(url).username or "guest"
        return (
            f"cannot open the test virtual host {vhost!r} at {redact_url(url)} "
            f"({type(exc).__name__}: {exc}); create it once with "
            f"`rabbitmqctl add_vhost {vhost} && rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'`"
        )
    return None


def rabbitmq_address(url: str = RABBITMQ_URL) -> tuple[str, int]:
    """Host and port of the broker at ``url``."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def amqp_url_via(host: str, port: int, url: str = RABBITMQ_URL) -> str:
    """``url`` with its host and port replaced, credentials and virtual host kept: the broker
    behind a TCP proxy listening at ``host:port``."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        parts._replace(netloc=f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}")
    )


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names ("/" when it names none)."""
    return unquote(urlsplit(url).path[1:]) or "/"


async def delete_topology(url: str, topology: Topology) -> None:
    """Delete a test's queues and exchanges from the broker at ``url``, once it answers again
    (the test may have cut or restarted it)."""
    connection = await aio_pika.connect_robust(url)
    try:
        await asyncio.wait_for(connection.connected.wait(), timeout=60)
        channel = await connection.channel()
        for q in topology.queues:
            await channel.queue_delete(q.name)
        for x in topology.exchanges:
            await channel.exchange_delete(x.name)
    finally:
        await connection.close()


# ---------------------------------------------------------------- a broker tests may disrupt
class DisruptableBroker(Protocol):
    """A broker the disruptive tests may stop, restart and cut off: never a shared one."""

    @property
    def url(self) -> str: ...

    async def rabbitmqctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` against this broker's node; fails the test if it fails."""
        ...


class ConfiguredBroker:
    """The broker of ``TASKPLATFORM_TEST_AMQP_URL``, declared disruptable by
    ``TASKPLATFORM_TEST_BROKER_DISRUPTABLE=1``; ``TASKPLATFORM_TEST_RABBITMQ_NODE`` names its node
    for rabbitmqctl (default: rabbitmqctl's own)."""

    def __init__(self, url: str, node: str | None) -> None:
        self.url = url
        self.node = node

    async def rabbitmqctl(self, *args: str) -> str:
        tool = shutil.which("rabbitmqctl")
        if tool is None:
            missing("rabbitmqctl is required to disrupt the broker (TASKPLATFORM_TEST_BROKER_DISRUPTABLE=1)")
        node = ["-n", self.node] if self.node else []
        proc = await asyncio.create_subprocess_exec(
            tool, *node, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {out.decode()[-500:]}"
        return out.decode(errors="replace")


class OwnNode:
    """A RabbitMQ node the suite started for itself (``tests/support/rabbit_node.py``)."""

    def __init__(self, node: RabbitNode) -> None:
        self.node = node
        self.url = node.url

    async def rabbitmqctl(self, *args: str) -> str:
        try:
            return await self.node.actl(*args)
        except RabbitNodeError as exc:
            pytest.fail(str(exc), pytrace=False)


@contextlib.contextmanager
def open_disruptable_broker(started: list[RabbitNode] | None = None) -> Iterator[DisruptableBroker]:
    """The configured broker when ``TASKPLATFORM_TEST_BROKER_DISRUPTABLE`` says it may be
    disrupted; else a RabbitMQ node of the suite's own (appended to ``started``), stopped on exit.
    Neither possible: skip loudly, or fail under ``CI=true``."""
    if BROKER_DISRUPTABLE:
        require_rabbitmq()
        yield ConfiguredBroker(RABBITMQ_URL, os.environ.get("TASKPLATFORM_TEST_RABBITMQ_NODE"))
        return
    try:
        node = RabbitNode(find_scripts(os.environ.get("TASKPLATFORM_TEST_RABBITMQ_SERVER")))
    except RabbitNodeError as exc:
        missing(f"the disruptive broker tests need a RabbitMQ node of their own: {exc}")
    try:
        node.start()
    except RabbitNodeError as exc:
        missing(f"the disruptive broker tests could not start a RabbitMQ node of their own: {exc}")
    if started is not None:
        started.append(node)
    try:
        yield OwnNode(node)
    finally:
        node.stop()


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
