"""``POST /api/v1/tasks/bulk``: up to 1,000 tasks per request, every item checked before anything
is stored (one invalid item refuses the request, naming each invalid item by index), per-item
results and idempotency keys, the single submission's ownership, rate limit and outbox rules."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.models import OutboxStatus, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import (
    MAX_BULK_TASKS,
)
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served
from tests.support.runtime import eventually
from tests.support.services import amqp_url_via, rabbitmq_address
from tests.support.tcp_proxy import TcpProxy

BULK = "/api/v1/tasks/bulk"
ALICE = bearer(token("alice"))
ADMIN = bearer(token("root", "admin"))
TEXT = "Quorum queues replicate messages. Confirms tell the producer a message is safe. " * 6


def noop(value: int = 0, **extra: Any) -> dict[str, Any]:
    return {"task_type": "test_noop", "parameters": {"value": value}, **extra}


Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Runtime]]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> Serve:
    """``async with serve(**settings) as (client, runtime)``: the API with JWT authentication and
    no worker, so published messages stay countable in the queues."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        values: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET, **overrides}
        runtime = Runtime(make_settings(**values), role="api", registry=registry, relay=False)
        async with served(runtime) as app, client_of(app) as client:
            yield client, runtime

    return run


async def stored(runtime: Runtime) -> int:
    return sum((await runtime.store.count_by_status()).values())


async def published(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    total = 0
    for name in (name for spec in runtime.topology.work_queues for name in spec.queues):
        queue = await channel.declare_queue(name, passive=True)  # every priority level
        total += int(queue.declaration_result.message_count)
    await channel.close()
    return total


def refused(r: httpx.Response, code: str) -> list[dict[str, Any]]:
    """The details of a 422 with ``code``."""
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code, r.text
    details: list[dict[str, Any]] = r.json()["error"]["details"]
    return details


# ---------------------------------------------------------------- the happy paths
@pytest.mark.integration
async def test_a_valid_batch_is_stored_published_and_answered_item_by_item_in_order(
    serve: Serve, rabbitmq: Any
) -> None:
    async with serve() as (client, runtime):
        items = [
            noop(1),
            {
                "task_type": "generate_summary",
                "parameters": {"text": TEXT, "max_sentences": 1},
                "priority": 7,
            },
            noop(3, tags=["a", "b"], metadata={"order": 42}),
        ]
        r = await client.post(BULK, json={"tasks": items}, headers=ALICE)
        assert r.status_code == 201, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == [0, 1, 2]
        assert {x["outcome"] for x in results} == {"created"} and {x["status"] for x in results} == {"QUEUED"}
        tasks = [await runtime.store.get(x["task_id"]) for x in results]
        assert [t.task_type for t in tasks if t] == ["test_noop", "generate_summary", "test_noop"]
        first, second, third = tasks
        assert first and second and third
        assert first.parameters == {"value": 1, "sleep": 0.0} and first.user_id == "alice"
        assert second.priority == 7 and third.tags == ["a", "b"] and third.metadata == {"order": 42}
        assert await published(rabbitmq, runtime) == 3
        await runtime.marker.flush()
        for x in results:
            task = await runtime.store.get(x["task_id"])
            assert task is not None and task.outbox.status is OutboxStatus.PUBLISHED


@pytest.mark.integration
async def test_a_thousand_tasks_pass_the_body_limit_and_are_all_stored_and_published(
    serve: Serve, rabbitmq: Any
) -> None:
    async with serve() as (client, runtime):
        items = [
            {
                "task_type": "generate_summary",
                "parameters": {"text": TEXT, "max_sentences": 1},
                "tags": [str(i)],
            }
            for i in range(MAX_BULK_TASKS)
        ]
        body = json.dumps({"tasks": items}).encode()
        assert 500_000 < len(body) < runtime.settings.max_body_bytes  # realistic items, the default limit
        r = await client.post(BULK, content=body, headers={**ALICE, "Content-Type": "application/json"})
        assert r.status_code == 201, r.text[:500]
        results = r.json()["results"]
        assert [x["index"] for x in results] == list(range(MAX_BULK_TASKS))
        assert len({x["task_id"] for x in results}) == MAX_BULK_TASKS
        assert await stored(runtime) == MAX_BULK_TASKS
        assert await published(rabbitmq, runtime) == MAX_BULK_TASKS
        task = await runtime.store.get(results[617]["task_id"])
        assert task is not None and task.tags == ["617"]


@pytest.mark.integration
async def test_more_than_a_thousand_or_none_is_refused_and_nothing_is_stored(serve: Serve) -> None:
    async with serve() as (client, runtime):
        r = await client.post(
            BULK, json={"tasks": [noop(i) for i in range(MAX_BULK_TASKS + 1)]}, headers=ALICE
        )
        details = refused(r, "validation_error")
        assert details[0]["loc"] == ["body", "tasks"] and "at most 1000 items" in details[0]["msg"]
        assert refused(await client.post(BULK, json={"tasks": []}, headers=ALICE), "validation_error")
        for body in ({}, {"tasks": noop()}, {"tasks": [5]}, {"tasks": [noop()], "more": 1}, [noop()]):
            assert (await client.post(BULK, json=body, headers=ALICE)).status_code == 422, body
        assert await stored(runtime) == 0


@pytest.mark.integration
async def test_a_body_over_the_limit_gets_413_naming_the_limit(serve: Serve) -> None:
    async with serve(max_body_bytes=4096) as (client, runtime):
        r = await client.post(
            BULK, json={"tasks": [noop(i, metadata={"pad": "x" * 200}) for i in range(30)]}, headers=ALICE
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"] == {
            "code": "payload_too_large",
            "message": "request body exceeds the limit of 4096 bytes",
        }
        assert await stored(runtime) == 0


# ---------------------------------------------------------------- one invalid item refuses all
@pytest.mark.integration
async def test_every_invalid_item_is_named_by_index_and_nothing_is_stored_or_published(
    serve: Serve, rabbitmq: Any
) -> None:
    async with serve() as (client, runtime):
        items = [noop(i) for i in range(40)]
        items[3] = {"task_type": "no_such_type", "parameters": {}}
        items[5] = {"task_type": "generate_summary", "parameters": {"text": "", "max_sentences": 0}}
        items[7] = noop(7, priority="5")  # strict: not coerced
        items[9] = noop(9, tags=["ok", "b\x00d"])
        items[11] = noop(11, idempotency_key="")
        items[13] = noop(13, extra_field=1)
        items[15] = {"task_type": "test_noop", "parameters": {"value": 2**64}}  # beyond 64 bits
        r = await client.post(BULK, json={"tasks": items}, headers=ALICE)
        details = refused(r, "validation_error")  # several codes: the generic one
        assert sorted({d["index"] for d in details}) == [3, 5, 7, 9, 11, 13, 15]
        by_index = {d["index"]: d for d in details}
        assert by_index[3]["code"] == "unknown_task_type" and "generate_summary" in by_index[3]["msg"]
        assert by_index[3]["loc"] == ["tasks", 3, "task_type"]
        invalid = [d for d in details if d["index"] == 5]
        assert {d["code"] for d in invalid} == {"invalid_parameters"}
        assert {tuple(d["loc"]) for d in invalid} >= {("tasks", 5, "parameters", "text")}
        assert by_index[7] == {**by_index[7], "code": "validation_error", "loc": ["tasks", 7, "priority"]}
        assert by_index[9]["loc"] == ["tasks", 9, "tags", 1] and by_index[9]["type"] == "unstorable_value"
        assert by_index[11]["loc"] == ["tasks", 11, "idempotency_key"]
        assert by_index[13]["loc"] == ["tasks", 13, "extra_field"]
        assert by_index[15]["code"] == "invalid_parameters"
        assert by_index[15]["loc"] == ["tasks", 15, "parameters", "value"]
        assert "7 of the submitted tasks are invalid, nothing was stored" in r.json()["error"]["message"]
        assert await stored(runtime) == 0 and await published(rabbitmq, runtime) == 0


@pytest.mark.integration
async def test_items_with_one_kind_of_problem_answer_that_code(serve: Serve) -> None:
    async with serve() as (client, runtime):
        items = [noop(), {"task_type": "nope", "parameters": {}}, {"task_type": "nope2", "parameters": {}}]
        details = refused(await client.post(BULK, json={"tasks": items}, headers=ALICE), "unknown_task_type")
        assert [d["index"] for d in details] == [1, 2]
        schema_only = [noop(0), noop(1, priority="5"), noop(2)]  # the others are valid
        details = refused(
            await client.post(BULK, json={"tasks": schema_only}, headers=ALICE), "validation_error"
        )
        assert [(d["index"], d["loc"]) for d in details] == [(1, ["tasks", 1, "priority"])]
        assert await stored(runtime) == 0
        bad_params = [noop(), {"task_type": "test_noop", "parameters": {"value": "x"}}]
        details = refused(
            await client.post(BULK, json={"tasks": bad_params}, headers=ALICE), "invalid_parameters"
        )
        assert details == [
            {
                "index": 1,
                "code": "invalid_parameters",
                "msg": "parameters.value: Input should be a valid integer, unable to parse string as an "
                "integer",
                "loc": ["tasks", 1, "parameters", "value"],
                "type": "int_parsing",
            }
        ]
        assert await stored(runtime) == 0


@pytest.mark.integration
async def test_idempotency_keys_are_checked_like_the_header(serve: Serve) -> None:
    async with serve() as (client, runtime):
        for key, type_ in (
            ("", "string_too_short"),
            ("k" * 256, "string_too_long"),
            ("a\x00b", "string_pattern_mismatch"),
            (5, "string_type"),
        ):
            details = refused(
                await client.post(BULK, json={"tasks": [noop(idempotency_key=key)]}, headers=ALICE),
                "validation_error",
            )
            assert details[0]["loc"] == ["tasks", 0, "idempotency_key"] and details[0]["type"] == type_
        # A lone surrogate is valid JSON, but no store can hold it.
        body = b'{"tasks": [{"task_type": "test_noop", "idempotency_key": "k\\ud800"}]}'
        r = await client.post(BULK, content=body, headers={**ALICE, "Content-Type": "application/json"})
        details = refused(r, "validation_error")
        assert details[0]["loc"] == ["tasks", 0, "idempotency_key"], details
        assert await stored(runtime) == 0


# ---------------------------------------------------------------- idempotency keys
@pytest.mark.integration
async def test_a_key_given_twice_in_one_request_is_refused_naming_both_items(serve: Serve) -> None:
    async with serve() as (client, runtime):
        items = [noop(0, idempotency_key="k1"), noop(1, idempotency_key="k2"), noop(2, idempotency_key="k1")]
        details = refused(
            await client.post(BULK, json={"tasks": items}, headers=ALICE), "duplicate_idempotency_key"
        )
        assert details == [
            {
                "index": 2,
                "code": "duplicate_idempotency_key",
                "msg": "idempotency key 'k1' is given to items 0 and 2 of this request: one key names one "
                "task",
                "idempotency_key": "k1",
                "indexes": [0, 2],
            }
        ]
        assert await stored(runtime) == 0
        # the same key for two users is two keys (an admin submitting for both)
        items = [noop(0, idempotency_key="k1", user_id="u1"), noop(0, idempotency_key="k1", user_id="u2")]
        assert (await client.post(BULK, json={"tasks": items}, headers=ADMIN)).status_code == 201
        assert await stored(runtime) == 2


@pytest.mark.integration
async def test_submitting_again_returns_the_existing_tasks_and_creates_only_the_new_ones(
    serve: Serve, rabbitmq: Any
) -> None:
    async with serve() as (client, runtime):
        items = [noop(0, idempotency_key="a"), noop(1, idempotency_key="b"), noop(2)]
        first = await client.post(BULK, json={"tasks": items}, headers=ALICE)
        assert first.status_code == 201
        ids = [x["task_id"] for x in first.json()["results"]]
        # The same keyed items again (spelt differently), one new keyed item, one unkeyed one.
        again_items = [
            {"idempotency_key": "b", "parameters": {"value": 1}, "priority": 0, "task_type": "test_noop"},
            noop(0, idempotency_key="a", tags=[], metadata={}),
            noop(5, idempotency_key="c"),
            noop(2),
        ]
        again = await client.post(BULK, json={"tasks": again_items}, headers=ALICE)
        assert again.status_code == 200, again.text
        results = again.json()["results"]
        assert [x["outcome"] for x in results] == ["existing", "existing", "created", "created"]
        assert results[0]["task_id"] == ids[1] and results[1]["task_id"] == ids[0]
        assert results[3]["task_id"] not in ids  # no key: a new task
        assert await stored(runtime) == 5 and await published(rabbitmq, runtime) == 5
        # A key used by the single route names the same task in a bulk submission, and back.
        single = await client.post("/api/v1/tasks", json=noop(9), headers={**ALICE, "Idempotency-Key": "s"})
        bulk = await client.post(BULK, json={"tasks": [noop(9, idempotency_key="s")]}, headers=ALICE)
        assert bulk.status_code == 200 and bulk.json()["results"][0]["task_id"] == single.json()["task_id"]
        back = await client.post("/api/v1/tasks", json=noop(5), headers={**ALICE, "Idempotency-Key": "c"})
        assert back.status_code == 200 and back.json()["task_id"] == results[2]["task_id"]
        # keys are per user: bob's "a" is another task
        bob = await client.post(
            BULK, json={"tasks": [noop(0, idempotency_key="a")]}, headers=bearer(token("bob"))
        )
        assert bob.status_code == 201 and bob.json()["results"][0]["task_id"] not in ids


@pytest.mark.integration
async def test_a_key_reused_with_another_task_refuses_the_request_and_stores_nothing(
    serve: Serve, rabbitmq: Any
) -> None:
    async with serve() as (client, runtime):
        first = await client.post(
            BULK, json={"tasks": [noop(0, idempotency_key="a"), noop(1, idempotency_key="b")]}, headers=ALICE
        )
        task_b = first.json()["results"][1]["task_id"]
        items = [
            noop(7),
            noop(0, idempotency_key="a"),
            noop(7, idempotency_key="new"),
            noop(2, idempotency_key="b"),
        ]
        details = refused(
            await client.post(BULK, json={"tasks": items}, headers=ALICE), "idempotency_key_reused"
        )
        assert details == [
            {
                "index": 3,
                "code": "idempotency_key_reused",
                "msg": f"Idempotency-Key 'b' was used before with a different submission (task {task_b}): "
                "send the same body again to get that task, or use a new key for a new task",
                "idempotency_key": "b",
                "task_id": task_b,
            }
        ]
        assert await stored(runtime) == 2 and await published(rabbitmq, runtime) == 2
        assert await runtime.store.find_by_idempotency_key("alice", "new") is None


# ---------------------------------------------------------------- who may submit
@pytest.mark.integration
async def test_only_an_admin_may_name_another_user(serve: Serve) -> None:
    async with serve() as (client, runtime):
        items = [noop(0), noop(1, user_id="alice"), noop(2, user_id="bob"), noop(3, user_id="carol")]
        r = await client.post(BULK, json={"tasks": items}, headers=ALICE)
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "forbidden" and "items 2, 3 name a user_id" in error["message"]
        assert error["details"] == [
            {"index": 2, "loc": ["tasks", 2, "user_id"]},
            {"index": 3, "loc": ["tasks", 3, "user_id"]},
        ]
        assert await stored(runtime) == 0
        ok = await client.post(BULK, json={"tasks": items[:2]}, headers=ALICE)
        assert ok.status_code == 201
        admin = await client.post(BULK, json={"tasks": items}, headers=ADMIN)
        assert admin.status_code == 201
        owners = [(await runtime.store.get(x["task_id"])).user_id for x in admin.json()["results"]]  # type: ignore[union-attr]
        assert owners == ["root", "alice", "bob", "carol"]
        many = [noop(i, user_id=f"u{i}") for i in range(12)]
        r = await client.post(BULK, json={"tasks": many}, headers=ALICE)
        assert (
            r.status_code == 403
            and "items 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … name" in r.json()["error"]["message"]
        )
        assert len(r.json()["error"]["details"]) == 12


@pytest.mark.integration
async def test_a_token_is_required_and_read_before_the_body(serve: Serve) -> None:
    async with serve() as (client, runtime):
        assert (await client.post(BULK, json={"tasks": [noop()]})).status_code == 401
        expired = bearer(token("alice", exp=1))
        assert (await client.post(BULK, json={"tasks": [noop()]}, headers=expired)).status_code == 401
        assert await stored(runtime) == 0


# ---------------------------------------------------------------- rate limit
@pytest.mark.integration
@pytest.mark.parametrize("backend", ["memory", "store"])
async def test_the_limit_is_charged_every_task_of_the_request(serve: Serve, backend: str) -> None:
    async with serve(api_submit_rate="1/m", api_submit_burst=6, api_rate_limit_backend=backend) as (
        client,
        runtime,
    ):
        assert (
            await client.post(BULK, json={"tasks": [noop(i) for i in range(4)]}, headers=ALICE)
        ).status_code == 201
        # 2 left: 3 tasks are refused whole, nothing stored
        r = await client.post(BULK, json={"tasks": [noop(i) for i in range(3)]}, headers=ALICE)
        assert r.status_code == 429, r.text
        assert "this bulk submission creates 3 tasks" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert await stored(runtime) == 4
        # a batch item counts its children: 1 + 1 child = 2, which fit
        batch = {"task_type": "batch_generate_summary", "parameters": {"items": [{"text": "One."}]}}
        assert (await client.post(BULK, json={"tasks": [batch]}, headers=ALICE)).status_code == 201
        assert (await client.post("/api/v1/tasks", json=noop(), headers=ALICE)).status_code == 429
        # more than the burst could never pass: 422, and it takes nothing (bob's limit is whole)
        bob = bearer(token("bob"))
        r = await client.post(BULK, json={"tasks": [noop(i) for i in range(7)]}, headers=bob)
        assert r.status_code == 422 and "would create 7 tasks" in r.json()["error"]["message"]
        assert "send at most 6 tasks per request" in r.json()["error"]["message"]
        assert (
            await client.post(BULK, json={"tasks": [noop(i) for i in range(6)]}, headers=bob)
        ).status_code == 201
        # a body that is not a bulk submission counts as one task, and is refused
        carol = bearer(token("carol"))
        bodies = (
            (b"{not json", "text/plain"),
            (b'{"tasks": 5}', "application/json"),
            (b"[]", "application/json"),
        )
        for content, kind in bodies:
            r = await client.post(BULK, content=content, headers={**carol, "Content-Type": kind})
            assert r.status_code == 422, r.text
        r = await client.post(BULK, json={"tasks": [noop(i) for i in range(4)]}, headers=carol)
        assert r.status_code == 429 and "creates 4 tasks" in r.json()["error"]["message"]  # 3 of 6 used
        ok = await client.post(BULK, json={"tasks": [noop(i) for i in range(3)]}, headers=carol)
        assert ok.status_code == 201


# ---------------------------------------------------------------- broker down
@pytest.mark.integration
async def test_with_the_broker_away_tasks_are_stored_unpublished_and_the_relay_publishes_them(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> None:
    proxy = TcpProxy(*rabbitmq_address())  # closed: the broker is unreachable
    settings = make_settings(amqp_url=amqp_url_via("127.0.0.1", proxy.port))
    runtime = Runtime(settings, role="api", registry=registry, relay=True)
    runtime.broker._retry_interval = 0.2
    from taskplatform.api.app import create_app

    app = create_app(runtime=runtime)
    try:
        async with app.router.lifespan_context(app), client_of(app) as client:
            r = await client.post(BULK, json={"tasks": [noop(0), noop(1, idempotency_key="k")]})
            assert r.status_code == 202, r.text
            results = r.json()["results"]
            assert [x["outcome"] for x in results] == ["stored_unpublished"] * 2
            for x in results:
                task = await runtime.store.get(x["task_id"])
                assert task is not None and task.status is TaskStatus.QUEUED
                assert task.outbox.status is OutboxStatus.PENDING
            # the same keyed item again: existing (200), whether published or not
            again = await client.post(BULK, json={"tasks": [noop(1, idempotency_key="k")]})
            assert again.status_code == 200 and again.json()["results"][0]["outcome"] == "existing"

            await proxy.open()  # the broker comes back: the relay publishes both

            async def relayed() -> bool:
                tasks = [await runtime.store.get(x["task_id"]) for x in results]
                return all(t is not None and t.outbox.status is OutboxStatus.PUBLISHED for t in tasks)

            await eventually(relayed, timeout=20)
            assert await published(rabbitmq, runtime) == 2
    finally:
        await proxy.close()


# ---------------------------------------------------------------- the document
@pytest.mark.integration
async def test_the_route_and_its_answers_are_in_the_openapi_document(serve: Serve) -> None:
    async with serve() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"][BULK]["post"]
    assert set(operation["responses"]) >= {"200", "201", "202", "401", "403", "413", "422", "429"}
    ok = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/BulkSubmitted"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    envelope = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    tasks = envelope["properties"]["tasks"]
    assert (tasks["minItems"], tasks["maxItems"]) == (1, MAX_BULK_TASKS)
    item = tasks["items"]
    assert item["title"] == "BulkSubmitItem" and "idempotency_key" in item["properties"]
    assert item["required"] == ["task_type"] and item["additionalProperties"] is False
    outcome = spec["components"]["schemas"]["BulkItemResult"]["properties"]["outcome"]
    assert outcome["enum"] == ["created", "existing", "stored_unpublished"]
    # the item's nested models are written in: a "#/$defs/..." left in the document points nowhere
    # (ReDoc stopped rendering on it), and every reference resolves within the document
    target = item["properties"]["target"]["anyOf"][0]
    assert target["title"] == "TaskTarget" and {"node", "labels", "mode", "target_timeout"} <= set(
        target["properties"]
    )
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec))
    assert refs and all(r.startswith("#/components/schemas/") for r in refs), sorted(set(refs))
    assert all(r.rsplit("/", 1)[1] in spec["components"]["schemas"] for r in refs)
    assert "$defs" not in json.dumps(spec)
