"""PATCH and DELETE of tasks over HTTP, with authentication on, against a real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.cli import main
from taskplatform.client import ApiError, TaskPlatformClient
from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import served as serving
from tests.support.executables import Noop
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration

ALICE = bearer(token("alice"))
BOB = bearer(token("bob"))
OLGA = bearer(token("olga", "operator"))


@pytest.fixture
async def served(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.ASGITransport, Runtime]]:
    """The API with JWT authentication and no worker: published messages stay in their queues."""
    settings = make_settings(auth="jwt", jwt_secret=SECRET)
    runtime = Runtime(settings, role="api", registry=registry, relay=False)
    async with serving(runtime) as app:
        yield httpx.ASGITransport(app=app), runtime


@pytest.fixture
async def api(
    served: tuple[httpx.ASGITransport, Runtime],
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    transport, runtime = served
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client, runtime


async def submit(client: httpx.AsyncClient, who: dict[str, str] = ALICE, **body: Any) -> str:
    r = await client.post("/api/v1/tasks", json={"task_type": "test_noop", **body}, headers=who)
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


async def depth(rabbitmq: Any, queue: str | None) -> int:
    assert queue is not None
    channel = await rabbitmq.channel()
    declared = await channel.declare_queue(queue, passive=True)
    await channel.close()
    return int(declared.declaration_result.message_count)


async def test_a_queued_task_takes_new_tags_and_metadata(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    task_id = await submit(client, tags=["draft"], metadata={"order": 7})
    r = await client.patch(
        f"/api/v1/tasks/{task_id}",
        json={"tags": ["ready", "eu", "ready"], "metadata": {"order": 8}},
        headers=ALICE,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == ["ready", "eu"] and body["metadata"] == {"order": 8} and body["status"] == "QUEUED"
    r = await client.get("/api/v1/tasks", params=[("tag", "ready"), ("tag", "eu")], headers=ALICE)
    assert [t["id"] for t in r.json()["items"]] == [task_id]
    assert (await client.get("/api/v1/tasks", params={"tag": "draft"}, headers=ALICE)).json()["items"] == []
    # another user's task answers like a missing one, and is not changed
    r = await client.patch(f"/api/v1/tasks/{task_id}", json={"tags": ["bob-was-here"]}, headers=BOB)
    assert r.status_code == 404
    r = await client.patch(f"/api/v1/tasks/{task_id}", json={"metadata": {"by": "olga"}}, headers=OLGA)
    assert r.status_code == 200 and r.json()["tags"] == ["ready", "eu"]


async def test_a_new_priority_moves_the_task_to_that_queue_and_it_runs_once(
    api: tuple[httpx.AsyncClient, Runtime], make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    client, runtime = api
    topo = runtime.topology
    task_id = await submit(client, priority=0)
    for priority in (9, 3):  # up, then down again: three messages, one valid
        r = await client.patch(f"/api/v1/tasks/{task_id}", json={"priority": priority}, headers=ALICE)
        assert r.status_code == 200 and r.json()["priority"] == priority
    for priority in (0, 9, 3):
        assert await depth(rabbitmq, topo.queue_for("test_noop", priority)) == 1
    r = await client.get("/api/v1/tasks", params={"priority": 3}, headers=ALICE)
    assert [t["id"] for t in r.json()["items"]] == [task_id]
    between = await submit(client, priority=5)  # must run before the task, now at 3

    Noop.calls.clear()
    async with running(make_runtime(prefetch=1)) as worker:

        async def drained() -> bool:
            done = [await worker.store.get(i) for i in (task_id, between)]
            depths = [await depth(rabbitmq, topo.queue_for("test_noop", p)) for p in (0, 9, 5, 3)]
            finished = all(t is not None and t.status is TaskStatus.COMPLETED for t in done)
            return finished and depths == [0, 0, 0, 0]

        await eventually(drained, timeout=15)
        task, other = [await worker.store.get(i) for i in (task_id, between)]
    assert Noop.calls[task_id] == 1  # the superseded messages lost their claims
    assert task is not None and other is not None and task.started_at and other.started_at
    assert other.started_at < task.started_at  # the stale priority-9 message did not run it


async def test_only_a_queued_task_can_be_changed_and_bad_changes_are_refused(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    task_id = await submit(client)
    await runtime.marker.flush()  # its outbox marked published (a write of its own) first
    before = await runtime.store.get(task_id)
    assert before is not None
    bad = [
        {},
        {"priority": 10},
        {"tags": ["x" * 65]},
        {"tags": ["nul\u0000"]},
        {"metadata": {"blob": "x" * 20_000}},
        {"status": "COMPLETED"},
    ]
    for body in bad:
        r = await client.patch(f"/api/v1/tasks/{task_id}", json=body, headers=ALICE)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error"
    task = await runtime.store.get(task_id)
    assert task is not None and task.tags == [] and task.metadata == {} and task.version == before.version
    assert (
        await client.patch("/api/v1/tasks/missing", json={"priority": 1}, headers=ALICE)
    ).status_code == 404
    await runtime.store.try_set_running(task_id, attempt=0, node_id="n", lease_until=task.created_at)
    r = await client.patch(f"/api/v1/tasks/{task_id}", json={"priority": 5}, headers=ALICE)
    assert (
        r.status_code == 409
        and "is RUNNING; only a QUEUED task can be changed" in r.json()["error"]["message"]
    )


async def test_a_finished_task_is_deleted_with_its_sub_tasks_and_others_are_refused(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    queued = await submit(client)
    r = await client.delete(f"/api/v1/tasks/{queued}", headers=ALICE)
    assert r.status_code == 409 and "QUEUED" in r.json()["error"]["message"]

    parent, *children = await _finished_tree(runtime, user="alice", children=2)
    r = await client.delete(f"/api/v1/tasks/{children[0]}", headers=ALICE)
    assert r.status_code == 409 and "deleted with its parent" in r.json()["error"]["message"]
    assert (await client.delete(f"/api/v1/tasks/{parent}", headers=BOB)).status_code == 404
    r = await client.delete(f"/api/v1/tasks/{parent}", headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.json()["task_id"] == parent and set(r.json()["deleted"]) == {parent, *children}
    for gone in (parent, *children):
        assert (await client.get(f"/api/v1/tasks/{gone}", headers=ALICE)).status_code == 404
    assert (await client.delete(f"/api/v1/tasks/{parent}", headers=ALICE)).status_code == 404
    assert await runtime.store.get(queued) is not None


async def _finished_tree(runtime: Runtime, *, user: str, children: int) -> list[str]:
    from tests.store.helpers import make_task

    parent = make_task(status=TaskStatus.COMPLETED, user_id=user)
    kids = [
        make_task(status=TaskStatus.COMPLETED, user_id=user, parent_task_id=parent.id)
        for _ in range(children)
    ]
    await runtime.store.create_many([parent, *kids])
    return [parent.id, *(k.id for k in kids)]


async def test_the_python_client_changes_and_deletes_tasks(
    served: tuple[httpx.ASGITransport, Runtime],
) -> None:
    transport, runtime = served
    alice = token("alice")
    async with TaskPlatformClient("http://api", token=alice, transport=transport) as client:
        task_id = await client.submit("test_noop", {}, tags=["a"], metadata={"k": 1})
        changed = await client.update(task_id, priority=4, tags=["b"])
        assert (changed.priority, changed.tags, changed.metadata) == (4, ["b"], {"k": 1})
        with pytest.raises(ApiError) as refused:
            await client.delete(task_id)
        assert refused.value.status == 409
        (done,) = await _finished_tree(runtime, user="alice", children=0)
        assert await client.delete(done) == [done]
        with pytest.raises(ApiError) as gone:
            await client.get(done)
        assert gone.value.status == 404


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["update", "t1"], "give at least one of --priority, --tag, --metadata"),
        (["update", "t1", "--metadata", "[1]"], "--metadata must be a JSON object, got list"),
        (["update", "t1", "--metadata", "{nope"], "--metadata is not valid JSON"),
    ],
)
def test_the_cli_refuses_an_update_it_cannot_send(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
