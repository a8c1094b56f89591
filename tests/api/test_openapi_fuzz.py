"""Fuzzing the running API from its own OpenAPI document (schemathesis), with authentication.

A real ``taskplatform dev`` process (API, worker, DLQ consumer; JWT authentication; its own
SQLite store and topology prefix on the test broker) answers schemathesis' generated requests
for every operation, as a submitter and as an operator. Each response must not be a server
error and must match what the document promises: status code, content type, headers, body.
Examples are bounded and derandomized, so the run is the same every time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from executors.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.executables import EXECUTABLES
from tests.support.services import RABBITMQ_URL, require_rabbitmq
from topology import build_topology

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
#: Generated requests per operation and caller.
EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CALLERS = {
    "submitter": bearer(token("fuzz-submitter")),
    "operator": bearer(token("fuzz-operator", "operator")),
    "expired": bearer(token("fuzz-submitter", exp=int(time.time()) - 3600)),  # every answer a 401
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _delete_topology(prefix: str) -> None:
    registry = ExecutableRegistry.discover()
    for cls in EXECUTABLES:
        registry.register(cls)
    topology = build_topology(registry.queues(), prefix=prefix)

    async def delete() -> None:
        connection = await aio_pika.connect_robust(RABBITMQ_URL)
        channel = await connection.channel()
        for queue in topology.queues:
            await channel.queue_delete(queue.name)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange.name)
        await connection.close()

    asyncio.run(delete())


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running ``taskplatform dev`` with JWT authentication; its base URL."""
    require_rabbitmq()
    port, prefix = _free_port(), f"fz{uuid.uuid4().hex[:8]}."
    store = tmp_path_factory.mktemp("fuzz") / "tasks.db"
    env = {
        **os.environ,
        "TASKPLATFORM_AUTH": "jwt",
        "TASKPLATFORM_JWT_SECRET": SECRET,
        "TASKPLATFORM_AMQP_URL": RABBITMQ_URL,
        "TASKPLATFORM_STORE_URL": f"sqlite+aiosqlite:///{store}",
        "TASKPLATFORM_TOPOLOGY_PREFIX": prefix,
        "TASKPLATFORM_EXECUTOR_MODULES": '["tests.support.executables"]',
        "TASKPLATFORM_LOG_LEVEL": "ERROR",
        "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "2",
    }
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "taskplatform.cli", "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the API exited with {server.returncode}"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not become ready within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        _delete_topology(prefix)


def test_every_response_is_documented_and_none_is_a_server_error(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                for headers in CALLERS.values():  # as a submitter, an operator, an expired token
                    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
                    statuses[response.status_code] += 1

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # an operation without parameters or body has no invalid input to send
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all are reported
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}"[:3000])
    requests = sum(statuses.values())
    print(f"fuzzed {len(operations)} operations, {requests} requests: {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert statuses[200] + statuses[201] > 0 and statuses[422] > 0  # it got past validation, and was refused
