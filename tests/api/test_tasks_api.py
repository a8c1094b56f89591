"""The HTTP API against a real broker: status codes, error shape, nothing kept from bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.api.app import create_app
from taskplatform.models import utcnow
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The API with no worker, so published messages stay countable in the queue."""
    runtime = Runtime(make_settings(max_body_bytes=4096), role="api", registry=registry, relay=False)
    async with served(runtime) as app, client_of(app) as client:
        yield client, runtime


async def queue_depth(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.work_queues[0].queue, passive=True)
    await channel.close()
    return int(queue.declaration_result.message_count)


async def stored(runtime: Runtime) -> int:
    return sum((await runtime.store.count_by_status()).values())


async def test_bad_submissions_are_refused_and_leave_nothing_behind(
    api: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    client, runtime = api
    r = await client.post("/api/v1/tasks", json={"task_type": "no_such_type", "parameters": {}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "unknown_task_type"
    assert "generate_summary" in err["message"] and "generate_scene" in err["message"]

    r = await client.post(
        "/api/v1/tasks",
        json={"task_type": "generate_summary", "parameters": {"text": "", "max_sentences": 0}},
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_parameters"
    locs = {tuple(d["loc"]) for d in err["details"]}
    assert ("parameters", "text") in locs and ("parameters", "max_sentences") in locs

    big = {"task_type": "generate_summary", "parameters": {"text": "word " * 2000}}
    r = await client.post("/api/v1/tasks", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the streamed limit applies
        for _ in range(10):
            yield b"x" * 1000

    r = await client.post("/api/v1/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text

    r = await client.post("/api/v1/tasks", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"

    r = await client.post(
        "/api/v1/tasks", json={"task_type": "generate_summary", "parameters": {"text": "A b."}, "surprise": 1}
    )
    assert r.status_code == 422 and "surprise" in r.json()["error"]["message"]
    # strict: nothing is coerced
    for field, value in (("priority", "5"), ("priority", True), ("priority", 5.0), ("tags", "a,b")):
        body = {"task_type": "generate_summary", "parameters": {"text": "A b."}, field: value}
        r = await client.post("/api/v1/tasks", json=body)
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["error"]["details"][0]["loc"] == ["body", field]

    assert await stored(runtime) == 0
    assert await queue_depth(rabbitmq, runtime) == 0

    # The same checks do see a good submission, so the zeros above mean something.
    r = await client.post(
        "/api/v1/tasks",
        json={"task_type": "generate_summary", "parameters": {"text": "One. Two.", "max_sentences": 1}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "QUEUED"
    assert await stored(runtime) == 1
    assert await queue_depth(rabbitmq, runtime) == 1


async def test_get_and_list_tasks_with_filters_and_cursor(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    ids = []
    for i in range(5):
        r = await client.post(
            "/api/v1/tasks",
            json={
                "task_type": "test_noop",
                "parameters": {"value": i},
                "user_id": "u1" if i % 2 else "u2",
                "tags": ["even"] if i % 2 == 0 else ["odd", "x"],
            },
        )
        assert r.status_code == 201
        ids.append(r.json()["task_id"])

    r = await client.get(f"/api/v1/tasks/{ids[0]}")
    assert r.status_code == 200 and r.json()["parameters"] == {"value": 0, "sleep": 0.0}
    r = await client.get("/api/v1/tasks/missing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    r = await client.get("/api/v1/tasks", params={"limit": 2})
    page1 = r.json()
    assert [t["id"] for t in page1["items"]] == ids[::-1][:2]
    r = await client.get("/api/v1/tasks", params={"limit": 2, "cursor": page1["next_cursor"]})
    assert [t["id"] for t in r.json()["items"]] == ids[::-1][2:4]

    r = await client.get("/api/v1/tasks", params=[("tag", "odd"), ("tag", "x"), ("user_id", "u1")])
    assert {t["id"] for t in r.json()["items"]} == {ids[1], ids[3]}
    r = await client.get("/api/v1/tasks", params={"status": "QUEUED", "task_type": "test_noop"})
    assert len(r.json()["items"]) == 5

    r = await client.get("/api/v1/tasks", params={"status": "SLEEPING"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = await client.get("/api/v1/tasks", params={"cursor": "garbage"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"


async def test_health_readiness_docs_and_task_types(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    await client.post("/api/v1/tasks", json={"task_type": "test_noop", "priority": 9})
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"store": "ok", "broker": "ok"}
    # the queues' depth, by passive declare: the task waits in its priority's queue, nobody consumes
    queues = r.json()["queues"]
    expected = {q for wq in runtime.topology.work_queues for q in wq.queues} | {
        runtime.topology.dead_letter_queue
    }
    assert set(queues) == expected
    assert queues[runtime.topology.queue_for("test_noop", 9)] == {"ready": 1, "consumers": 0}
    assert queues[runtime.topology.dead_letter_queue] == {"ready": 0, "consumers": 0}
    r = await client.get("/swagger/index.html")
    assert r.status_code == 307 and r.headers["location"] == "/docs"
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/tasks" in spec["paths"]
    types = {t["task_type"]: t for t in (await client.get("/api/v1/task-types")).json()}
    assert "text" in types["generate_summary"]["parameters_schema"]["properties"]


async def test_readiness_reports_an_unreachable_broker(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry
) -> None:
    from tests.support.tcp_proxy import free_port

    settings = make_settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    app = create_app(runtime=Runtime(settings, role="api", registry=registry, relay=False))
    async with app.router.lifespan_context(app), client_of(app) as client:  # the broker never gets ready
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"store": "ok", "broker": "unavailable"}
        r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}})
        assert r.status_code == 202 and r.json()["status"] == "QUEUED"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"task_type": "test_noop", "parameters": {"value": 2**64}}, ["parameters", "value"]),
        ({"task_type": "generate_summary", "parameters": {"text": "A\x00b."}}, ["parameters", "text"]),
        ({"task_type": "test_noop", "parameters": {}, "user_id": "u\x00"}, ["user_id"]),
        ({"task_type": "test_noop", "parameters": {}, "tags": ["ok", "b\x00d"]}, ["tags", 1]),
    ],
)
async def test_values_no_store_can_hold_are_refused_as_bad_input(
    api: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any, body: dict[str, Any], where: list[Any]
) -> None:
    client, runtime = api
    r = await client.post("/api/v1/tasks", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == where
    assert await stored(runtime) == 0 and await queue_depth(rabbitmq, runtime) == 0


async def test_nul_in_path_or_query_is_refused_as_bad_input(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    assert (await client.get("/api/v1/tasks/a%00b")).status_code == 422
    assert (await client.get("/api/v1/tasks", params={"user_id": "a\x00"})).status_code == 422


async def test_cancel_answers_for_waiting_missing_and_finished_tasks(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}})
    task_id = r.json()["task_id"]
    r = await client.post(f"/api/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200 and r.json() == {
        "task_id": task_id,
        "status": "CANCELLED",
        "cancel_requested": True,
    }
    r = await client.post(f"/api/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200  # cancelling a cancelled task is idempotent
    assert (await client.post("/api/v1/tasks/nope/cancel")).status_code == 404
    done = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", parameters={}))
    await runtime.store.try_set_running(done.task.id, attempt=0, node_id="n", lease_until=utcnow())
    await runtime.store.record_completion(done.task.id, node_id="n", attempt=0, result={"value": 0})
    r = await client.post(f"/api/v1/tasks/{done.task.id}/cancel")
    assert r.status_code == 409 and "already COMPLETED" in r.json()["error"]["message"]


async def test_fifty_concurrent_submissions_with_one_idempotency_key_make_one_task(
    api: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    import asyncio

    client, runtime = api
    body = {"task_type": "generate_summary", "parameters": {"text": "One. Two."}, "user_id": "u1"}
    headers = {"Idempotency-Key": "order-42"}
    responses = await asyncio.gather(
        *(client.post("/api/v1/tasks", json=body, headers=headers) for _ in range(50))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [201], codes
    assert len({r.json()["task_id"] for r in responses}) == 1
    assert await stored(runtime) == 1
    assert await queue_depth(rabbitmq, runtime) == 1  # published once

    other_user = await client.post("/api/v1/tasks", json={**body, "user_id": "u2"}, headers=headers)
    no_key = await client.post("/api/v1/tasks", json=body)
    assert other_user.status_code == 201 and no_key.status_code == 201
    assert await stored(runtime) == 3
    bad = await client.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and await stored(runtime) == 3
