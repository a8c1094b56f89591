"""Replays refused for invalid parameters are audited like every other action (real RabbitMQ
and PostgreSQL, through the HTTP API)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.models import BackgroundTask, DeadLetter, TaskStatus, utcnow
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served
from tests.support.runtime import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def platform(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    postgres_database_url: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = make_settings(store_url=postgres_database_url)
    runtime = Runtime(settings, role="dev", registry=registry, consume=True, relay=True)
    async with served(runtime) as app, client_of(app, headers={"X-Operator": "carol"}) as client:
        yield client, runtime


async def _audit_of(client: httpx.AsyncClient, record_id: str) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/dead-letters/audit", params={"dead_letter_id": record_id})
    assert r.status_code == 200
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_replays_refused_for_invalid_parameters_answer_422_and_are_audited(
    platform: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = platform
    submitted = await runtime.submitter.submit(
        SubmitRequest(task_type="test_picky", parameters={"value": -1})
    )
    task_id = submitted.task.id

    async def dead() -> bool:
        return await runtime.store.get_dead_letter(task_id) is not None

    await eventually(dead, timeout=15)

    wrong_type = await client.post(
        f"/api/v1/dead-letters/{task_id}/replay", json={"parameters": {"value": "x"}}
    )
    assert wrong_type.status_code == 422 and wrong_type.json()["error"]["code"] == "invalid_parameters"
    too_big = await client.post(
        f"/api/v1/dead-letters/{task_id}/replay", json={"parameters": {"value": 2**70}}
    )
    assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "invalid_parameters"

    audit = await _audit_of(client, task_id)
    assert [(a["action"], a["actor"], a["parameters_overridden"]) for a in audit] == [
        ("replay", "carol", True)
    ] * 2
    newest, oldest = audit
    assert newest["outcome"].startswith("refused: invalid parameters: ")
    assert "parameters.value: integer out of the 64-bit range" in newest["outcome"]
    assert oldest["outcome"].startswith("refused: invalid parameters: parameters.value: ")
    assert "valid integer" in oldest["outcome"]
    task = await runtime.store.get(task_id)
    assert task is not None and task.status is TaskStatus.DEAD_LETTER and task.replays == 0  # nothing changed


async def test_a_replay_refused_for_a_task_type_no_longer_registered_is_audited(
    platform: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = platform
    # a task of a type this deployment no longer has, dead, with its record
    task = BackgroundTask(task_type="retired_type", parameters={"a": 1}, status=TaskStatus.DEAD_LETTER)
    await runtime.store.create(task)
    record = DeadLetter(id=task.id, task_id=task.id, task_type=task.task_type, reason="unknown-task-type")
    await runtime.store.upsert_dead_letter(record.model_copy(update={"last_seen_at": utcnow()}))

    r = await client.post(f"/api/v1/dead-letters/{task.id}/replay", json={"parameters": {"a": 2}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_task_type"
    audit = await _audit_of(client, task.id)
    assert len(audit) == 1 and audit[0]["action"] == "replay"
    assert audit[0]["outcome"].startswith("refused: invalid parameters: unknown task type 'retired_type'")
