"""The attempt history and the audit log through the API, against real RabbitMQ and PostgreSQL:
a task retried twice, dead-lettered, then replayed from the DLQ shows its four attempts, in
order, with their generations, outcomes, errors, nodes and hosts, and the audit log shows who
submitted it and who replayed it; a running attempt shows as running; another user's task is
not found."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served
from tests.support.runtime import eventually

pytestmark = pytest.mark.integration

ALICE, BOB, OPS = token("alice"), token("bob"), token("ops", "operator")


@pytest.fixture
async def platform(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    postgres_database_url: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = make_settings(store_url=postgres_database_url, auth="jwt", jwt_secret=SECRET)
    runtime = Runtime(settings, role="dev", registry=registry, consume=True, relay=True)
    async with served(runtime) as app, client_of(app, headers=bearer(ALICE)) as client:
        yield client, runtime


async def _status(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    task = await runtime.store.get(task_id)
    return task is not None and task.status is status


async def test_a_task_retried_twice_then_replayed_shows_every_attempt(
    platform: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = platform
    created = await client.post("/api/v1/tasks", json={"task_type": "test_fails_thrice", "parameters": {}})
    assert created.status_code == 201, created.text
    task_id = created.json()["task_id"]
    await eventually(lambda: _status(runtime, task_id, TaskStatus.DEAD_LETTER), timeout=30)

    async def recorded() -> bool:  # the DLQ consumer stores the record once the message arrives
        return await runtime.store.get_dead_letter(task_id) is not None

    await eventually(recorded, timeout=30)
    replayed = await client.post(
        f"/api/v1/dead-letters/{task_id}/replay", json={"parameters": {"fail": False}}, headers=bearer(OPS)
    )
    assert replayed.status_code == 200, replayed.text
    await eventually(lambda: _status(runtime, task_id, TaskStatus.COMPLETED), timeout=30)

    answer = await client.get(f"/api/v1/tasks/{task_id}/attempts")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task_id"] == task_id and body["status"] == "COMPLETED"
    rows = [
        (a["generation"], a["attempt"], a["outcome"], a["retried"], a["error_type"]) for a in body["attempts"]
    ]
    assert rows == [
        (0, 0, "failed", True, "FlakyError"),
        (0, 1, "failed", True, "FlakyError"),
        (0, 2, "failed", False, "FlakyError"),
        (1, 0, "completed", False, None),
    ]
    node = runtime.settings.node_id
    for row in body["attempts"]:
        assert row["node_id"] == node and row["host"] == socket.gethostname()
        assert row["started_at"] <= row["ended_at"] and row["duration_seconds"] >= 0
    assert body["attempts"][2]["error_message"] == "attempt 2 fails on purpose"
    # another user does not see that it exists
    assert (await client.get(f"/api/v1/tasks/{task_id}/attempts", headers=bearer(BOB))).status_code == 404
    # the audit log names who submitted it and who replayed it
    audit = await client.get("/api/v1/audit", params={"task_id": task_id}, headers=bearer(OPS))
    assert audit.status_code == 200, audit.text
    entries = [(e["actor"], e["action"], e["outcome"]) for e in audit.json()["items"]]
    assert entries == [("ops", "replay", "ok"), ("alice", "submit", "ok")]
    [replay] = [e for e in audit.json()["items"] if e["action"] == "replay"]
    assert replay["dead_letter_ids"] == [task_id] and replay["parameters_overridden"] is True


async def test_the_attempt_running_now_is_listed_as_running(
    platform: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = platform
    submitted = await runtime.submitter.submit(
        SubmitRequest(task_type="test_noop", parameters={"value": 1, "sleep": 3}, user_id="alice")
    )
    task_id = submitted.task.id
    await eventually(lambda: _status(runtime, task_id, TaskStatus.RUNNING), timeout=15)
    body = (await client.get(f"/api/v1/tasks/{task_id}/attempts")).json()
    [running] = body["attempts"]
    assert (running["outcome"], running["attempt"], running["ended_at"]) == ("running", 0, None)
    assert running["node_id"] == runtime.settings.node_id and running["host"] is not None  # from the registry
    await eventually(lambda: _status(runtime, task_id, TaskStatus.COMPLETED), timeout=15)
    [done] = (await client.get(f"/api/v1/tasks/{task_id}/attempts")).json()["attempts"]
    assert done["outcome"] == "completed" and done["ended_at"] is not None
