"""``TaskPlatformClient.submit_many`` against a fake bulk route: requests of at most 1,000 tasks
and of the body limit, results indexed into the whole list, a refused request's indexes moved
likewise, and what cannot be sent refused before anything is."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from taskplatform.client import (
    BULK_MAX_BYTES,
    BULK_MAX_TASKS,
    ApiError,
    BulkResult,
    BulkSubmitError,
    TaskPlatformClient,
)
from taskplatform.submission import MAX_BULK_TASKS
from tests.support.executables import Noop
from tests.support.fake_api import BASE, TOKEN, FakeApi, body

BULK = "/api/v1/tasks/bulk"


def bulk_route(
    outcome: str = "created",
    refuse: Callable[[int, list[dict[str, Any]]], httpx.Response | None] | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    """A fake bulk route: ids ``t<n>`` counting every task it took; ``refuse(request_number,
    items)`` may answer instead."""
    taken = 0
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal taken, calls
        calls += 1
        items = body(request)["tasks"]
        if refuse is not None and (answer := refuse(calls, items)) is not None:
            return answer
        results = [
            {"index": i, "task_id": f"t{taken + i}", "status": "QUEUED", "outcome": outcome}
            for i in range(len(items))
        ]
        taken += len(items)
        return httpx.Response(201, json={"results": results})

    return handle


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> TaskPlatformClient:
    return TaskPlatformClient(BASE, token=TOKEN, transport=api.transport)


def noop(i: int, **extra: Any) -> dict[str, Any]:
    return {"task_type": "test_noop", "parameters": {"value": i}, **extra}


def test_the_client_chunks_as_the_api_allows() -> None:
    assert BULK_MAX_TASKS == MAX_BULK_TASKS
    from taskplatform.settings import PlatformSettings

    assert PlatformSettings.model_fields["max_body_bytes"].default == BULK_MAX_BYTES


async def test_a_long_list_goes_in_requests_of_a_thousand_and_comes_back_indexed_whole(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    done: list[int] = []
    async with client:
        results = await client.submit_many([noop(i) for i in range(2500)], on_progress=done.append)
    assert [len(body(r)["tasks"]) for r in api.requests] == [1000, 1000, 500]
    assert done == [1000, 2000, 2500]
    assert results[1234] == BulkResult(index=1234, task_id="t1234", status="QUEUED", outcome="created")
    assert [r.index for r in results] == list(range(2500))
    request = api.requests[1]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert body(request)["tasks"][0] == noop(1000)


async def test_requests_stay_under_the_byte_limit(api: FakeApi, client: TaskPlatformClient) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    tasks = [noop(i, metadata={"pad": "é" * (i % 50)}) for i in range(300)]  # non-ASCII: bytes, not chars
    async with client:
        results = await client.submit_many(tasks, max_request_bytes=4000)
    sizes = [len(r.content) for r in api.requests]
    assert max(sizes) <= 4000 and len(sizes) > 1
    assert sum(len(body(r)["tasks"]) for r in api.requests) == 300
    # each request is as full as the next task allows
    for request, following in zip(api.requests, api.requests[1:], strict=False):
        first_next = json.dumps(body(following)["tasks"][0], separators=(",", ":"), ensure_ascii=False)
        assert len(request.content) + 1 + len(first_next.encode()) > 4000
    assert [r.task_id for r in results] == [f"t{i}" for i in range(300)]
    api.requests.clear()
    async with TaskPlatformClient(BASE, transport=api.transport) as other:
        await other.submit_many([noop(i) for i in range(10)], chunk_size=3)
    assert [len(body(r)["tasks"]) for r in api.requests] == [3, 3, 3, 1]


async def test_a_request_exactly_at_the_limit_is_sent_and_one_byte_more_is_split(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    size = len(json.dumps(noop(1), separators=(",", ":")).encode())
    alone = len(b'{"tasks":[]}') + size
    exact = alone + 1 + size  # two tasks and the comma between them
    async with client:
        await client.submit_many([noop(1)] * 4, max_request_bytes=exact)
        assert [len(r.content) for r in api.requests] == [exact, exact]
        api.requests.clear()
        await client.submit_many([noop(1)] * 2, max_request_bytes=exact - 1)
        assert [len(r.content) for r in api.requests] == [alone, alone]


async def test_classes_and_models_are_sent_by_name_and_as_json(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    class Params(BaseModel):
        value: int

    api.routes[("POST", BULK)] = bulk_route()
    async with client:
        await client.submit_many([{"task_type": Noop, "parameters": Params(value=3), "idempotency_key": "k"}])
    assert body(api.only)["tasks"] == [
        {"task_type": "test_noop", "parameters": {"value": 3}, "idempotency_key": "k"}
    ]


@pytest.mark.parametrize(
    ("task", "why"),
    [
        (noop(0, metadata={"x": math.nan}), "Out of range float values"),
        (noop(0, metadata={"x": object()}), "not JSON serializable"),
        (noop(0, idempotency_key="k\ud800"), "surrogate"),
    ],
)
async def test_a_task_that_cannot_be_sent_is_refused_before_anything_is_sent(
    api: FakeApi, client: TaskPlatformClient, task: dict[str, Any], why: str
) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    async with client:
        with pytest.raises(ValueError, match=f"task 1001 cannot be sent as JSON: .*{why}"):
            await client.submit_many([*(noop(i) for i in range(1001)), task])
    assert api.requests == []


async def test_a_task_larger_than_a_request_is_refused_before_anything_is_sent(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    async with client:
        with pytest.raises(ValueError, match="task 2 is 1[0-9]{3} bytes as JSON: .* exceed 1000 bytes"):
            await client.submit_many(
                [noop(0), noop(1), noop(2, metadata={"pad": "x" * 1000})], max_request_bytes=1000
            )
        for size in (0, 1001):
            with pytest.raises(ValueError, match="chunk_size must be 1 to 1000"):
                await client.submit_many([noop(0)], chunk_size=size)
    assert api.requests == []


async def test_a_refused_request_keeps_what_was_stored_and_names_items_in_the_whole_list(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    details = [
        {"index": 5, "code": "invalid_parameters", "msg": "bad", "loc": ["tasks", 5, "parameters", "value"]},
        {"index": 9, "code": "duplicate_idempotency_key", "msg": "twice", "indexes": [2, 9]},
        {"loc": ["body", "tasks", 7], "msg": "not an object", "type": "dict_type"},
        "not a dict",
    ]

    def second_refused(call: int, items: list[dict[str, Any]]) -> httpx.Response | None:
        if call != 2:
            return None
        error = {
            "code": "validation_error",
            "message": "2 of the submitted tasks are invalid",
            "details": details,
        }
        return httpx.Response(422, json={"error": error})

    api.routes[("POST", BULK)] = bulk_route(refuse=second_refused)
    async with client:
        with pytest.raises(BulkSubmitError) as refused:
            await client.submit_many([noop(i) for i in range(2500)])
    exc = refused.value
    assert isinstance(exc, ApiError) and (exc.status, exc.code) == (422, "validation_error")
    assert exc.first == 1000 and exc.count == 2500 and len(api.requests) == 2  # the third was not sent
    assert [r.task_id for r in exc.results] == [f"t{i}" for i in range(1000)]
    assert exc.details == [
        {
            "index": 1005,
            "code": "invalid_parameters",
            "msg": "bad",
            "loc": ["tasks", 1005, "parameters", "value"],
        },
        {"index": 1009, "code": "duplicate_idempotency_key", "msg": "twice", "indexes": [1002, 1009]},
        {"loc": ["body", "tasks", 1007], "msg": "not an object", "type": "dict_type"},
        "not a dict",
    ]
    assert exc.message == "2 of the submitted tasks are invalid"
    assert str(exc) == (
        "HTTP 422 validation_error: 2 of the submitted tasks are invalid (in the request from task 1000 on; "
        "tasks 0 to 999 were stored)"
    )


async def test_a_first_request_refused_stored_nothing(api: FakeApi, client: TaskPlatformClient) -> None:
    details = [{"index": 1, "loc": ["tasks", 1, "user_id"]}]

    def refuse(call: int, items: list[dict[str, Any]]) -> httpx.Response:
        error = {"code": "forbidden", "message": "only an admin may", "details": details}
        return httpx.Response(403, json={"error": error})

    api.routes[("POST", BULK)] = bulk_route(refuse=refuse)
    async with client:
        with pytest.raises(BulkSubmitError) as refused:
            await client.submit_many([noop(0), noop(1, user_id="bob")])
    assert refused.value.results == [] and refused.value.first == 0
    assert refused.value.details == details
    assert str(refused.value) == "HTTP 403 forbidden: only an admin may"
