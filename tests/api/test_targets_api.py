"""Aimed tasks through the API (JWT, a real broker, a memory store whose registry the test
writes): a target nothing can serve is a 422 ``target_unreachable`` naming why, single and bulk,
with nothing stored; a bad target shape is a 422 naming the field; a ``mode: each`` fan-out
answers with its parent, whose children are listed per host with ``?node=``; the client
submits targets and lists children."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from taskplatform.client import ApiError, TaskPlatformClient
from taskplatform.models import TaskStatus
from taskplatform.models.worker import WorkerRecord
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.targets import child_id
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

ALICE = token("alice")


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, httpx.ASGITransport]]:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, reaper_enabled=False)
    runtime = Runtime(settings, role="api", registry=registry, relay=False, store=MemoryTaskStore())
    async with served(runtime) as app, client_of(app, headers=bearer(ALICE)) as client:
        for node, labels in (("db-1", {"role": "db"}), ("db-2", {"role": "db"}), ("web-1", {"role": "web"})):
            await runtime.store.beat_worker(_record(runtime, node, labels))
        yield client, runtime, httpx.ASGITransport(app=app)


def _record(runtime: Runtime, node: str, labels: dict[str, str]) -> WorkerRecord:
    now = runtime.store.now()
    return WorkerRecord(
        node_id=node,
        host=node,
        pid=1,
        labels=labels,
        task_types=["test_noop"],
        concurrency=4,
        version="1",
        started_at=now,
        last_seen_at=now,
        heartbeat_seconds=60.0,
        expires_at=now + timedelta(seconds=180),
    )


def _body(target: Any, **extra: Any) -> dict[str, Any]:
    return {"task_type": "test_noop", "parameters": {"value": 1}, "target": target, **extra}


async def test_a_target_nothing_serves_is_refused_naming_why_and_nothing_is_stored(
    api: tuple[httpx.AsyncClient, Runtime, httpx.ASGITransport],
) -> None:
    client, runtime, _ = api
    cases = [
        (_body({"node": "db-9"}), "no worker node 'db-9' has registered"),
        (_body({"node": "web-1"}, task_type="test_boom"), "does not serve 'test_boom'"),
        (_body({"labels": {"role": "cache"}, "mode": "each"}), "no online worker carries labels role=cache"),
    ]
    for body, why in cases:
        answer = await client.post("/api/v1/tasks", json=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "target_unreachable" and why in error["message"]
        assert error["details"][0]["loc"] == ["target"] and why in error["details"][0]["msg"]
    assert await runtime.store.count_by_status() == {}


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ({}, "either a node or labels"),
        ({"node": "db-1", "labels": {"role": "db"}}, "either a node or labels"),
        ({"node": "db-1", "mode": "each"}, "mode 'each' needs labels"),
        ({"labels": {"role": "d b"}}, "the value is 1 to 63"),
        ({"node": "db-1", "target_timeout": -1}, "greater than 0"),
        ({"node": "db-1", "target_timeout": "60"}, "valid number"),
        ({"node": 5}, "valid string"),
        ("db-1", "valid dictionary"),
    ],
)
async def test_a_malformed_target_is_a_validation_error_naming_it(
    api: tuple[httpx.AsyncClient, Runtime, httpx.ASGITransport], target: Any, why: str
) -> None:
    client, runtime, _ = api
    answer = await client.post("/api/v1/tasks", json=_body(target))
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error" and "target" in error["message"] and why in error["message"]
    assert await runtime.store.count_by_status() == {}


async def test_a_fan_out_answers_with_its_parent_and_lists_its_children_per_host(
    api: tuple[httpx.AsyncClient, Runtime, httpx.ASGITransport],
) -> None:
    client, runtime, _ = api
    answer = await client.post("/api/v1/tasks", json=_body({"labels": {"role": "db"}, "mode": "each"}))
    assert answer.status_code == 201, answer.text
    parent_id = answer.json()["task_id"]
    assert answer.json()["status"] == TaskStatus.RUNNING.value
    parent = (await client.get(f"/api/v1/tasks/{parent_id}")).json()
    assert parent["target"] == {
        "node": None,
        "labels": {"role": "db"},
        "mode": "each",
        "target_timeout": 300.0,
    }
    assert parent["sub_task_status_summary"]["total"] == 2
    listed = (await client.get(f"/api/v1/tasks/{parent_id}/children")).json()["items"]
    assert sorted(c["target"]["node"] for c in listed) == ["db-1", "db-2"]
    one = (await client.get(f"/api/v1/tasks/{parent_id}/children", params={"node": "db-2"})).json()["items"]
    assert [c["id"] for c in one] == [child_id(parent_id, "db-2")]
    none = await client.get(f"/api/v1/tasks/{parent_id}/children", params={"node": "web-1"})
    assert none.status_code == 200 and none.json()["items"] == []
    for bad in ("", "a\x00b", "x" * 256):
        refused = await client.get(f"/api/v1/tasks/{parent_id}/children", params={"node": bad})
        assert refused.status_code == 422, bad


async def test_a_bulk_submission_names_each_item_aimed_nowhere_and_stores_none(
    api: tuple[httpx.AsyncClient, Runtime, httpx.ASGITransport],
) -> None:
    client, runtime, _ = api
    items = [_body({"node": "db-1"}), _body(None), _body({"node": "gone"}), _body({"node": "db-2"})]
    answer = await client.post("/api/v1/tasks/bulk", json={"tasks": items})
    assert answer.status_code == 422, answer.text
    problems = answer.json()["error"]["details"]
    assert [(p["index"], p["code"]) for p in problems] == [(2, "target_unreachable")]
    assert "no worker node 'gone' has registered" in problems[0]["msg"]
    assert await runtime.store.count_by_status() == {}
    accepted = await client.post("/api/v1/tasks/bulk", json={"tasks": [items[0], items[1], items[3]]})
    assert accepted.status_code in (201, 202), accepted.text
    stored = [await runtime.store.get(r["task_id"]) for r in accepted.json()["results"]]
    assert [t.target.node if t and t.target else None for t in stored] == ["db-1", None, "db-2"]


async def test_the_client_aims_tasks_and_lists_a_fan_outs_children(
    api: tuple[httpx.AsyncClient, Runtime, httpx.ASGITransport],
) -> None:
    _, runtime, transport = api
    async with TaskPlatformClient("http://api", token=ALICE, transport=transport) as client:
        aimed = await client.submit("test_noop", {"value": 2}, target={"node": "db-1", "target_timeout": 5})
        task = await runtime.store.get(aimed)
        assert task is not None and task.target is not None
        assert (task.target.node, task.target.target_timeout) == ("db-1", 5.0)
        parent = await client.submit(
            "test_noop", {"value": 3}, target={"labels": {"role": "db"}, "mode": "each"}
        )
        page = await client.list_children(parent, node="db-1")
        assert [c.id for c in page.items] == [child_id(parent, "db-1")] and page.next_cursor is None
        assert len((await client.list_children(parent, status=TaskStatus.QUEUED, limit=1)).items) == 1
        with pytest.raises(ApiError) as refused:
            await client.submit("test_noop", {}, target={"node": "nowhere"})
        assert refused.value.status == 422 and refused.value.code == "target_unreachable"
