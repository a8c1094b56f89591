"""An Idempotency-Key reused with a different submission answers 422 ``idempotency_key_reused``
(as the IETF Idempotency-Key draft and Stripe do); the same submission again answers 200 with
the first task; tasks stored before fingerprints were kept are returned as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.models import BackgroundTask
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import IdempotencyKeyReusedError, SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {
    "task_type": "generate_summary",
    "parameters": {"text": "One. Two.", "max_sentences": 1},
    "user_id": "u1",
}
KEY = {"Idempotency-Key": "order-42"}


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The API with no worker, so published messages stay countable in the queue."""
    runtime = Runtime(make_settings(), role="api", registry=registry, relay=False)
    async with served(runtime) as app, client_of(app) as client:
        yield client, runtime


async def stored(runtime: Runtime) -> int:
    return sum((await runtime.store.count_by_status()).values())


async def published(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    total = 0
    for spec in runtime.topology.work_queues:
        queue = await channel.declare_queue(spec.queue, passive=True)
        total += int(queue.declaration_result.message_count)
    await channel.close()
    return total


def assert_reused(response: httpx.Response, task_id: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "'order-42'" in error["message"] and task_id in error["message"]
    assert error["details"] == [{"idempotency_key": "order-42", "task_id": task_id}]


async def test_a_key_reused_with_another_submission_is_refused_and_stores_nothing(
    api: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    client, runtime = api
    first = await client.post("/api/v1/tasks", json=BODY, headers=KEY)
    assert first.status_code == 201
    task_id = first.json()["task_id"]
    changed: list[dict[str, Any]] = [
        {**BODY, "parameters": {"text": "One. Two.", "max_sentences": 2}},
        {**BODY, "parameters": {"text": "Three."}},
        {**BODY, "task_type": "test_noop", "parameters": {}},
        {**BODY, "priority": 5},
        {**BODY, "tags": ["urgent"]},
        {**BODY, "metadata": {"order": 42}},
    ]
    for body in changed:
        r = await client.post("/api/v1/tasks", json=body, headers=KEY)
        assert_reused(r, task_id)
    assert await stored(runtime) == 1
    assert await published(rabbitmq, runtime) == 1
    again = await client.post("/api/v1/tasks", json=BODY, headers=KEY)
    assert again.status_code == 200 and again.json()["task_id"] == task_id


async def test_the_same_submission_in_another_spelling_is_the_same(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    first = await client.post("/api/v1/tasks", json=BODY, headers=KEY)
    assert first.status_code == 201
    # Keys in another order, and the top-level defaults spelt out (as the Python client sends).
    spelt = {
        "metadata": {},
        "tags": [],
        "priority": 0,
        "parameters": {"max_sentences": 1, "text": "One. Two."},
        "user_id": "u1",
        "task_type": "generate_summary",
    }
    again = await client.post("/api/v1/tasks", json=spelt, headers=KEY)
    assert again.status_code == 200 and again.json()["task_id"] == first.json()["task_id"]
    assert await stored(runtime) == 1


async def test_keys_stay_per_user_and_a_new_key_makes_a_new_task(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    first = await client.post("/api/v1/tasks", json=BODY, headers=KEY)
    other_user = await client.post(
        "/api/v1/tasks", json={**BODY, "user_id": "u2", "priority": 3}, headers=KEY
    )
    new_key = await client.post(
        "/api/v1/tasks", json={**BODY, "priority": 3}, headers={"Idempotency-Key": "order-43"}
    )
    assert (first.status_code, other_user.status_code, new_key.status_code) == (201, 201, 201)
    assert await stored(runtime) == 3


async def test_a_batch_parent_follows_the_same_rule(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    batch = {
        "task_type": "batch_generate_summary",
        "parameters": {"items": [{"text": "One."}, {"text": "Two."}]},
    }
    first = await client.post("/api/v1/tasks", json=batch, headers=KEY)
    assert first.status_code == 201
    same = await client.post("/api/v1/tasks", json=batch, headers=KEY)
    assert same.status_code == 200 and same.json()["task_id"] == first.json()["task_id"]
    more_items = {**batch, "parameters": {"items": [{"text": "One."}, {"text": "Two."}, {"text": "3."}]}}
    assert_reused(await client.post("/api/v1/tasks", json=more_items, headers=KEY), first.json()["task_id"])
    assert await stored(runtime) == 1


async def test_concurrent_submissions_with_one_key_and_two_bodies_make_one_task(
    api: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    client, runtime = api
    other = {**BODY, "parameters": {"text": "Something else."}}
    bodies = [BODY, other] * 15
    responses = await asyncio.gather(*(client.post("/api/v1/tasks", json=b, headers=KEY) for b in bodies))
    created = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    winner, first = created[0]
    task_id = first.json()["task_id"]
    for body, r in zip(bodies, responses, strict=True):
        if body is winner:
            assert r.status_code in (200, 201) and r.json()["task_id"] == task_id
        else:
            assert_reused(r, task_id)
    assert await stored(runtime) == 1
    assert await published(rabbitmq, runtime) == 1


async def test_a_task_stored_without_a_fingerprint_is_returned_as_before(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    # As a task submitted before fingerprints were kept (SQL migration 0007) is stored.
    old = BackgroundTask(
        task_type="generate_summary", user_id="u1", parameters={"text": "Old."}, idempotency_key="order-42"
    )
    await runtime.store.create(old)
    r = await client.post("/api/v1/tasks", json=BODY, headers=KEY)
    assert r.status_code == 200 and r.json()["task_id"] == old.id
    assert await stored(runtime) == 1


async def test_the_submitter_raises_for_python_callers_too(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    _, runtime = api
    request = SubmitRequest.model_validate(BODY)
    first = await runtime.submitter.submit(request, idempotency_key="order-42")
    again = await runtime.submitter.submit(request, idempotency_key="order-42")
    assert first.created and not again.created and again.task.id == first.task.id
    assert first.task.idempotency_fingerprint is not None
    changed = request.model_copy(update={"priority": 1})
    with pytest.raises(IdempotencyKeyReusedError) as caught:
        await runtime.submitter.submit(changed, idempotency_key="order-42")
    assert caught.value.key == "order-42" and caught.value.task_id == first.task.id


async def test_the_openapi_document_names_the_code(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    spec = (await client.get("/openapi.json")).json()
    submit = spec["paths"]["/api/v1/tasks"]["post"]
    assert "idempotency_key_reused" in submit["responses"]["422"]["description"]
    header = next(p for p in submit["parameters"] if p["name"] == "Idempotency-Key")
    assert "idempotency_key_reused" in header["description"]
