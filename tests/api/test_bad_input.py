"""Bad input over HTTP answers 4xx naming what was wrong, on every SQL backend; never 5xx."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.models import BackgroundTask, DeadLetter, TaskStatus, utcnow
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The API without a worker, on SQLite or PostgreSQL."""
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        overrides["store_url"] = request.getfixturevalue("postgres_database_url")
    runtime = Runtime(make_settings(**overrides), role="api", registry=registry, relay=False)
    async with served(runtime) as app, client_of(app) as client:
        yield client, runtime


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def as_json(body: dict[str, Any]) -> dict[str, Any]:
    """Request arguments sending ``body`` with lone surrogates escaped (httpx cannot encode them)."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


UNSTORABLE = [
    pytest.param(nested(300), id="nested-300"),
    pytest.param({"a": [nested(100)]}, id="nested-101"),
    pytest.param({"a": "x\ud800y"}, id="lone-surrogate-value"),
    pytest.param({"\udfff": 1}, id="lone-surrogate-key"),
    pytest.param({"a": 2**64}, id="int-over-64-bits"),
    pytest.param({"a": [-(2**64)]}, id="int-under-64-bits"),
    pytest.param({"a": "x\x00"}, id="nul"),
]


def names(body: dict[str, Any], field: str) -> bool:
    return any(field in d["loc"] for d in body["error"]["details"])


@pytest.mark.parametrize("metadata", UNSTORABLE)
async def test_unstorable_metadata_is_refused_naming_metadata_on_submit_and_patch(
    api: tuple[httpx.AsyncClient, Runtime], metadata: dict[str, Any]
) -> None:
    client, runtime = api
    r = await client.post(
        "/api/v1/tasks", **as_json({"task_type": "test_noop", "parameters": {}, "metadata": metadata})
    )
    assert r.status_code == 422, r.text
    assert names(r.json(), "metadata"), r.text
    r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}})
    task_id = r.json()["task_id"]
    for target in (task_id, "no-such-task"):
        r = await client.patch(f"/api/v1/tasks/{target}", **as_json({"metadata": metadata}))
        assert r.status_code == 422, r.text
        assert names(r.json(), "metadata"), r.text
    task = await runtime.store.get(task_id)
    assert task is not None and task.metadata == {}


FANOUT = "test_fanout"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            {"task_type": FANOUT, "parameters": {"children": [nested(300)]}}, "parameters", id="deep"
        ),
        pytest.param(
            {"task_type": FANOUT, "parameters": {"children": [{"\ud800": 1}]}}, "parameters", id="key"
        ),
        pytest.param(
            {"task_type": "generate_summary", "parameters": {"text": "A\udc00b."}}, "parameters", id="text"
        ),
        pytest.param({"task_type": "test_noop", "parameters": {}, "tags": ["\ud800"]}, "tags", id="tag"),
        pytest.param({"task_type": "test_noop", "parameters": {}, "user_id": "\ud800"}, "user_id", id="user"),
    ],
)
async def test_unstorable_parameters_tags_and_user_are_refused_naming_the_field(
    api: tuple[httpx.AsyncClient, Runtime], body: dict[str, Any], field: str
) -> None:
    client, _ = api
    r = await client.post("/api/v1/tasks", **as_json(body))
    assert r.status_code == 422, r.text
    assert names(r.json(), field), r.text


async def test_unstorable_tags_on_patch_are_refused_naming_tags(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}})
    r = await client.patch(f"/api/v1/tasks/{r.json()['task_id']}", **as_json({"tags": ["ok", "\ud800"]}))
    assert r.status_code == 422, r.text
    assert names(r.json(), "tags"), r.text


@pytest.mark.parametrize(
    "stamp",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-01-01T00:00:00"],
    ids=["underflow", "overflow", "naive"],
)
@pytest.mark.parametrize("field", ["since", "until"])
async def test_dead_letter_times_out_of_range_or_naive_are_refused_naming_the_parameter(
    api: tuple[httpx.AsyncClient, Runtime], stamp: str, field: str
) -> None:
    client, _ = api
    r = await client.get("/api/v1/dead-letters", params={field: stamp})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["query", field]
    r = await client.post("/api/v1/dead-letters/replay", json={field: stamp, "dry_run": True})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["body", field]


async def test_dead_letter_times_in_any_offset_are_accepted(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    r = await client.get(
        "/api/v1/dead-letters",
        params={"since": "0001-01-01T00:00:00-01:00", "until": "9999-12-31T23:59:59+01:00"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["total"] == 0


BAD_CURSORS = [
    pytest.param(cursor("2026-01-01T00:00:00+00:00|a\x00b"), id="nul-id"),
    pytest.param(cursor("0001-01-01T00:00:00+14:00|abc"), id="time-underflow"),
    pytest.param(cursor("9999-12-31T23:59:59-14:00|abc"), id="time-overflow"),
]


@pytest.mark.parametrize("bad", BAD_CURSORS)
async def test_bad_cursors_are_refused_as_bad_input_on_every_list(
    api: tuple[httpx.AsyncClient, Runtime], bad: str
) -> None:
    client, _ = api
    r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}})
    task_id = r.json()["task_id"]
    for path in (
        "/api/v1/tasks",
        f"/api/v1/tasks/{task_id}/children",
        "/api/v1/dead-letters",
        "/api/v1/dead-letters/audit",
    ):
        r = await client.get(path, params={"cursor": bad})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_cursor", (path, r.text)


async def test_nul_in_list_filters_is_refused_naming_the_parameter(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    r = await client.get("/api/v1/tasks", params={"tag": ["ok", "b\x00d"]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["query", "tag", 1]
    for name in ("task_type", "reason", "user_id", "error_type", "task_id"):
        r = await client.get("/api/v1/dead-letters", params={name: "a\x00"})
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["details"][0]["loc"] == ["query", name]
    r = await client.get("/api/v1/dead-letters/audit", params={"dead_letter_id": "a\x00"})
    assert r.status_code == 422, r.text
    for name in ("task_type", "reason", "user_id", "error_type"):
        r = await client.post("/api/v1/dead-letters/replay", json={name: "a\x00", "dry_run": True})
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["details"][0]["loc"] == ["body", name]


async def test_method_not_allowed_lists_every_method_of_the_path(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    r = await client.options("/api/v1/tasks")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    r = await client.put("/api/v1/tasks/some-id")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    r = await client.delete("/api/v1/dead-letters")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


async def test_replay_parameters_nested_too_deep_are_refused_naming_parameters(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    task = BackgroundTask(task_type=FANOUT, parameters={}, status=TaskStatus.DEAD_LETTER)
    await runtime.store.create(task)
    record = DeadLetter(id=task.id, task_id=task.id, task_type=FANOUT, reason="max_retries")
    await runtime.store.upsert_dead_letter(record.model_copy(update={"last_seen_at": utcnow()}))
    r = await client.post(
        f"/api/v1/dead-letters/{task.id}/replay", json={"parameters": {"children": [nested(300)]}}
    )
    assert r.status_code == 422, r.text
    assert names(r.json(), "parameters"), r.text
    stored = await runtime.store.get(task.id)
    assert stored is not None and stored.status is TaskStatus.DEAD_LETTER and stored.replays == 0


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"])
async def test_cursors_at_the_ends_of_utc_time_are_served(
    api: tuple[httpx.AsyncClient, Runtime], stamp: str
) -> None:
    client, _ = api
    r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}})
    for path in ("/api/v1/tasks", "/api/v1/dead-letters", "/api/v1/dead-letters/audit"):
        r = await client.get(path, params={"cursor": cursor(f"{stamp}|zzz")})
        assert r.status_code == 200, (path, r.text)
