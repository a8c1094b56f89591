"""List pages are bounded in bytes as well as in count, and the summary view leaves out the large
fields: a list over large tasks must not build a response of every task it matches."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from taskplatform.models import BackgroundTask, DeadLetter, utcnow
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

PAGE_BYTES = 200_000
#: The page's envelope beyond its items (``{"items":[...],"next_cursor":...}``, dead-letter counts).
ENVELOPE = 2_000
LARGE = "x" * 30_000


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    overrides: dict[str, Any] = {"api_max_page_bytes": PAGE_BYTES}
    if request.param == "postgresql":
        overrides["store_url"] = request.getfixturevalue("postgres_database_url")
    runtime = Runtime(make_settings(**overrides), role="api", registry=registry, relay=False)
    async with served(runtime) as app, client_of(app) as client:
        yield client, runtime


async def large_tasks(runtime: Runtime, user: str, n: int, **fields: Any) -> list[str]:
    """``n`` tasks of ``user`` with ~60 KB of parameters, result and metadata each, newest first;
    every third pair shares its ``created_at``, so the cursor must break ties by id."""
    start = utcnow() - timedelta(hours=1)
    tasks = [
        BackgroundTask(
            task_type="test_noop",
            user_id=user,
            parameters={"value": i, "text": LARGE},
            result={"text": LARGE},
            metadata={"note": "m" * 1000},
            created_at=start + timedelta(seconds=i - i % 3),
            **fields,
        )
        for i in range(n)
    ]
    await runtime.store.create_many(tasks)
    return [t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)]


async def walk(client: httpx.AsyncClient, url: str, **params: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Every page of a list from the first: the ids in order, and each page's body."""
    ids: list[str] = []
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await client.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        assert len(r.content) <= PAGE_BYTES + ENVELOPE or len(r.json()["items"]) == 1, len(r.content)
        body = r.json()
        assert body["items"], "a page has at least one item"
        pages.append(body)
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
        assert len(pages) < 100, "the cursor does not advance"


async def test_a_list_of_large_tasks_stops_at_the_byte_bound_and_its_cursor_loses_and_repeats_nothing(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    user = f"u-{uuid.uuid4().hex}"
    expected = await large_tasks(runtime, user, 25)

    seen, pages = await walk(client, "/api/v1/tasks", user_id=user, limit=500)

    assert seen == expected  # each task exactly once, newest first across the pages
    assert len(pages) >= 5  # 25 × ~62 KB in pages of 200 KB
    assert all(len(p["items"]) < 25 for p in pages)
    assert pages[0]["items"][0]["parameters"]["text"] == LARGE  # full view by default


async def test_a_task_larger_than_the_bound_comes_alone_and_the_list_goes_on_after_it(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    user = f"u-{uuid.uuid4().hex}"
    expected = await large_tasks(runtime, user, 4)
    huge = BackgroundTask(
        task_type="test_noop", user_id=user, parameters={"text": "y" * (PAGE_BYTES + 10_000)}
    )
    await runtime.store.create(huge)  # the newest

    seen, pages = await walk(client, "/api/v1/tasks", user_id=user, limit=500)

    assert seen == [huge.id, *expected]
    assert [t["id"] for t in pages[0]["items"]] == [huge.id]


async def test_the_summary_view_leaves_out_parameters_results_progress_and_metadata(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    user = f"u-{uuid.uuid4().hex}"
    expected = await large_tasks(runtime, user, 25)

    r = await client.get("/api/v1/tasks", params={"user_id": user, "limit": 500, "view": "summary"})

    assert r.status_code == 200, r.text
    body = r.json()
    assert [t["id"] for t in body["items"]] == expected and body["next_cursor"] is None
    assert len(r.content) < 25 * 2_000
    for item in body["items"]:
        assert not {"parameters", "result", "progress", "metadata"} & set(item), sorted(item)
        assert item["user_id"] == user and item["status"] == "QUEUED" and item["task_type"] == "test_noop"

    r = await client.get("/api/v1/tasks", params={"user_id": user, "view": "everything"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


async def test_a_parents_children_are_bounded_in_bytes_and_have_a_summary_view(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    user = f"u-{uuid.uuid4().hex}"
    parent = BackgroundTask(task_type="test_fanout", user_id=user)
    await runtime.store.create(parent)
    expected = await large_tasks(runtime, user, 20, parent_task_id=parent.id)
    url = f"/api/v1/tasks/{parent.id}/children"

    seen, pages = await walk(client, url, limit=500)
    assert seen == expected and len(pages) >= 4

    summary, pages = await walk(client, url, limit=500, view="summary")
    assert summary == expected and len(pages) == 1
    assert not any("parameters" in t or "result" in t for t in pages[0]["items"])


async def test_a_list_of_large_dead_letters_stops_at_the_byte_bound_without_loss_or_repeats(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    user = f"u-{uuid.uuid4().hex}"
    start = utcnow() - timedelta(hours=1)
    records = [
        DeadLetter(
            id=f"{user}-{i:02d}",
            user_id=user,
            reason="rejected",
            body=json.dumps({"text": LARGE, "i": i}),
            last_seen_at=start + timedelta(seconds=i - i % 2),
        )
        for i in range(12)
    ]
    for record in records:
        await runtime.store.upsert_dead_letter(record)
    expected = [d.id for d in sorted(records, key=lambda d: (d.last_seen_at, d.id), reverse=True)]

    seen, pages = await walk(client, "/api/v1/dead-letters", user_id=user, limit=500)

    assert seen == expected and len(pages) >= 2
    assert all(p["counts"]["total"] == 12 for p in pages), pages[0]["counts"]
