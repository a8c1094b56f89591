"""Submissions per user: 429 with Retry-After past the burst, per caller, nothing kept; off by default.

A batch is charged the tasks it creates (its items plus one); one heavier than the burst gets 422."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.api.ratelimit import retry_after
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

ALICE = bearer(token("alice"))
BOB = bearer(token("bob"))
NOOP = {"task_type": "test_noop", "parameters": {}}

Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Runtime]]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> Serve:
    """``async with serve(**settings) as (client, runtime)``: the API with JWT authentication, no
    worker (published messages stay in the queue, countable). ``client.client_from(address)``
    is a client of the same app calling from another address."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        values: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET, **overrides}
        runtime = Runtime(make_settings(**values), role="api", registry=registry, relay=False)
        async with served(runtime) as app:

            def client_from(address: tuple[str, int]) -> httpx.AsyncClient:
                return client_of(app, address=address)

            async with client_from(("127.0.0.1", 123)) as client:
                client.client_from = client_from  # type: ignore[attr-defined]
                yield client, runtime

    return run


async def stored(runtime: Runtime) -> int:
    return sum((await runtime.store.count_by_status()).values())


async def queued(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.work_queues[0].queue, passive=True)
    await channel.close()
    return int(queue.declaration_result.message_count)


def assert_too_many(r: httpx.Response, seconds: int) -> None:
    assert r.status_code == 429, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "too_many_requests"
    assert "at most 1/m per caller (bursts of 3)" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == str(seconds)


@pytest.mark.parametrize("backend", ["memory", "store"])
async def test_past_the_burst_a_user_gets_429_with_retry_after_and_nothing_is_kept(
    serve: Serve, rabbitmq: Any, backend: str
) -> None:
    async with serve(api_submit_rate="1/m", api_submit_burst=3, api_rate_limit_backend=backend) as (
        client,
        runtime,
    ):
        for _ in range(3):
            assert (await client.post("/api/v1/tasks", json=NOOP, headers=ALICE)).status_code == 201
        for _ in range(3):  # refused requests consume nothing: the wait does not grow
            assert_too_many(await client.post("/api/v1/tasks", json=NOOP, headers=ALICE), 60)
        assert await stored(runtime) == 3 and await queued(rabbitmq, runtime) == 3
        # another user has a limit of their own
        assert (await client.post("/api/v1/tasks", json=NOOP, headers=BOB)).status_code == 201
        assert await stored(runtime) == 4


async def test_without_authentication_the_client_address_is_limited(serve: Serve) -> None:
    async with serve(auth="disabled", api_submit_rate="1/m", api_submit_burst=3) as (client, runtime):
        for _ in range(3):
            assert (await client.post("/api/v1/tasks", json=NOOP)).status_code == 201
        assert_too_many(await client.post("/api/v1/tasks", json=NOOP), 60)
        async with client.client_from(("10.0.0.7", 5000)) as other:  # type: ignore[attr-defined]
            assert (await other.post("/api/v1/tasks", json=NOOP)).status_code == 201
        assert await stored(runtime) == 4


async def test_the_limit_is_off_by_default_and_other_routes_are_never_limited(serve: Serve) -> None:
    async with serve() as (client, runtime):
        assert runtime.settings.api_submit_rate is None
        for _ in range(30):  # more than the default burst
            assert (await client.post("/api/v1/tasks", json=NOOP, headers=ALICE)).status_code == 201
    async with serve(api_submit_rate="1/m", api_submit_burst=1) as (client, runtime):
        assert (await client.post("/api/v1/tasks", json=NOOP, headers=ALICE)).status_code == 201
        assert (await client.post("/api/v1/tasks", json=NOOP, headers=ALICE)).status_code == 429
        for _ in range(5):
            assert (await client.get("/api/v1/tasks", headers=ALICE)).status_code == 200


async def test_authentication_comes_before_the_limit(serve: Serve) -> None:
    async with serve(api_submit_rate="1/m", api_submit_burst=1) as (client, runtime):
        for _ in range(3):  # unauthenticated requests neither pass nor use up alice's limit
            assert (await client.post("/api/v1/tasks", json=NOOP)).status_code == 401
        assert (await client.post("/api/v1/tasks", json=NOOP, headers=ALICE)).status_code == 201


async def test_the_429_and_its_retry_after_header_are_in_the_openapi_document(serve: Serve) -> None:
    async with serve() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    submit = spec["paths"]["/api/v1/tasks"]["post"]["responses"]["429"]
    assert submit["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert submit["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    assert "429" not in spec["paths"]["/api/v1/tasks"]["get"]["responses"]


def summaries(n: int) -> dict[str, Any]:
    """A ``batch_generate_summary`` submission of ``n`` items: it will create n + 1 tasks."""
    items = [{"text": f"text number {i}."} for i in range(n)]
    return {"task_type": "batch_generate_summary", "parameters": {"items": items}}


@pytest.mark.parametrize("backend", ["memory", "store"])
async def test_a_batch_is_charged_its_children_too_and_the_next_submission_gets_429(
    serve: Serve, backend: str
) -> None:
    async with serve(api_submit_rate="5/s", api_submit_burst=10, api_rate_limit_backend=backend) as (
        client,
        runtime,
    ):
        # 9 items: the parent and its 9 children take the whole burst of 10
        assert (await client.post("/api/v1/tasks", json=summaries(9), headers=ALICE)).status_code == 201
        for body in (NOOP, summaries(1)):
            r = await client.post("/api/v1/tasks", json=body, headers=ALICE)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_requests"
            assert "at most 5/s per caller (bursts of 10)" in r.json()["error"]["message"]
            assert r.headers["retry-after"] == "1"
        assert await stored(runtime) == 1
        # the children a parent submits later are not charged again: bob's limit is his own
        assert (await client.post("/api/v1/tasks", json=NOOP, headers=BOB)).status_code == 201


async def test_batches_are_paced_by_the_tasks_they_create(serve: Serve) -> None:
    # The defect: seven batches of 3,000 passed a 5/s limit in 0.6 s. Now a second batch of 60
    # waits until its 61 tasks fit: (61 + 61 - 100) / 5 per s = 4.4 s.
    async with serve(api_submit_rate="5/s", api_submit_burst=100) as (client, runtime):
        assert (await client.post("/api/v1/tasks", json=summaries(60), headers=ALICE)).status_code == 201
        r = await client.post("/api/v1/tasks", json=summaries(60), headers=ALICE)
        assert r.status_code == 429, r.text
        assert "this submission creates 61 tasks" in r.json()["error"]["message"]
        assert r.headers["retry-after"] in {"4", "5"}
        assert await stored(runtime) == 1
        # the 39 tokens left still serve lighter submissions at once
        assert (await client.post("/api/v1/tasks", json=summaries(30), headers=ALICE)).status_code == 201
        assert await stored(runtime) == 2


@pytest.mark.parametrize("backend", ["memory", "store"])
async def test_a_batch_heavier_than_the_burst_is_refused_with_422_and_consumes_nothing(
    serve: Serve, backend: str
) -> None:
    async with serve(api_submit_rate="5/s", api_submit_burst=10, api_rate_limit_backend=backend) as (
        client,
        runtime,
    ):
        r = await client.post("/api/v1/tasks", json=summaries(10), headers=ALICE)
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert "would create 11 tasks" in message and "per-user burst of 10 (API_SUBMIT_BURST)" in message
        assert "split it into batches of at most 9 items" in message
        assert "retry-after" not in r.headers  # waiting would not help
        assert await stored(runtime) == 0
        # nothing was taken: the largest batch that fits still passes at once
        assert (await client.post("/api/v1/tasks", json=summaries(9), headers=ALICE)).status_code == 201
        assert await stored(runtime) == 1


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert [retry_after(w) for w in (0.0, 0.001, 0.999, 1.0, 1.001, 59.2)] == [1, 1, 1, 1, 2, 60]


async def test_charging_without_a_rate_takes_nothing() -> None:
    from types import SimpleNamespace

    from taskplatform.api.ratelimit import charge

    class NoLimiter:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the limiter was used ({name}) though no rate is set")

    runtime = SimpleNamespace(
        settings=SimpleNamespace(api_submit_rate=None, api_submit_burst=5), submit_rate_limiter=NoLimiter()
    )
    await charge(runtime, None, None, 3, "")  # type: ignore[arg-type]
