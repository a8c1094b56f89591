"""The audit log through the API (JWT, a real broker, a memory store): submissions (single and
bulk), changes, cancels and deletions are recorded with their actor and outcome, refusals too;
operators read it filtered by actor, action, task and time; submitters may not read it; bad
filters are 422."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

ALICE, BOB, OPS = bearer(token("alice")), bearer(token("bob")), bearer(token("ops", "operator"))


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, reaper_enabled=False)
    runtime = Runtime(settings, role="api", registry=registry, relay=False, store=MemoryTaskStore())
    async with served(runtime) as app, client_of(app, headers=ALICE) as client:
        yield client, runtime


async def _audit(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await client.get("/api/v1/audit", params=params, headers=OPS)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_task_actions_are_recorded_with_their_actor_and_outcome(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    noop = {"task_type": "test_noop", "parameters": {"value": 1}}
    one = (await client.post("/api/v1/tasks", json=noop)).json()["task_id"]
    bulk = await client.post("/api/v1/tasks/bulk", json={"tasks": [noop, noop]})
    assert bulk.status_code in (201, 202), bulk.text
    two, three = (r["task_id"] for r in bulk.json()["results"])
    assert (await client.patch(f"/api/v1/tasks/{one}", json={"priority": 5})).status_code == 200
    assert (await client.delete(f"/api/v1/tasks/{two}")).status_code == 409  # still QUEUED
    assert (await client.post(f"/api/v1/tasks/{one}/cancel", headers=BOB)).status_code == 404  # not his
    assert (await client.post(f"/api/v1/tasks/{one}/cancel")).status_code == 200
    assert (await client.delete(f"/api/v1/tasks/{one}")).status_code == 200

    log = await _audit(client)
    rows = [(e["actor"], e["action"], e["task_ids"], e["outcome"].split(":")[0]) for e in log]
    assert rows == [
        ("alice", "delete", [one], "ok"),
        ("alice", "cancel", [one], "ok"),
        ("bob", "cancel", [one], "refused"),
        ("alice", "delete", [two], "refused"),
        ("alice", "patch", [one], "ok"),
        ("alice", "submit", [two, three], "ok"),
        ("alice", "submit", [one], "ok"),
    ]
    assert log[3]["outcome"].startswith("refused: task") and "QUEUED" in log[3]["outcome"]
    assert log[4]["details"] == {"fields": ["priority"]} and log[1]["details"] == {"status": "CANCELLED"}
    assert log[6]["details"] == {"task_type": "test_noop"} and log[5]["details"]["bulk"] is True
    assert [e["action"] for e in await _audit(client, task_id=one)] == [
        "delete",
        "cancel",
        "cancel",
        "patch",
        "submit",
    ]
    assert [e["action"] for e in await _audit(client, actor="bob")] == ["cancel"]
    assert [e["task_ids"] for e in await _audit(client, action="submit")] == [[two, three], [one]]
    newest = log[0]["at"]
    assert [e["id"] for e in await _audit(client, until=newest)] == [e["id"] for e in log[1:]]
    assert [e["id"] for e in await _audit(client, since=newest)] == [log[0]["id"]]
    page = (await client.get("/api/v1/audit", params={"limit": 3}, headers=OPS)).json()
    rest = (await client.get("/api/v1/audit", params={"cursor": page["next_cursor"]}, headers=OPS)).json()
    assert [e["id"] for e in page["items"] + rest["items"]] == [e["id"] for e in log]
    # the dead-letter audit route is the same log
    assert (await client.get("/api/v1/dead-letters/audit", headers=OPS)).json()["items"] == log


async def test_only_operators_read_the_audit_log_and_bad_filters_are_422(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    assert (await client.get("/api/v1/audit")).status_code == 403
    for params in ({"action": "explode"}, {"since": "2026-01-01T00:00:00"}, {"limit": 0}, {"actor": "x\x00"}):
        answer = await client.get("/api/v1/audit", params=params, headers=OPS)
        assert answer.status_code == 422, (params, answer.text)
    bad_cursor = await client.get("/api/v1/audit", params={"cursor": "nonsense"}, headers=OPS)
    assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.text
