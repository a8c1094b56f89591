"""The task routes on an app that only holds the runtime, and the commands' required principal.

A router mounted on another app needs nothing in ``app.state`` but the runtime (and the
authenticator its guards use): the commands come from ``runtime.commands``. Every command takes
the caller's principal; a submitter gets 404 for another user's task, as for a missing one.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from taskplatform.api.auth import Authenticator, install_auth
from taskplatform.api.manage import router as manage_router
from taskplatform.api.routes import tasks_router
from taskplatform.auth import SYSTEM, TokenVerifier
from taskplatform.commands import TaskCommands
from taskplatform.deadletters.service import DeadLetterService
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.settings import PlatformSettings
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.submission import PublishedMarker, TaskSubmitter
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.executables import EXECUTABLES

NODE = "node-1"
ALICE = bearer(token("alice"))
BOB = bearer(token("bob"))


class Publisher:
    ready = True

    async def publish_many(self, messages: Sequence[TaskMessage]) -> list[BaseException | None]:
        return [None] * len(messages)

    def count_failure(self, reason: str, n: int = 1) -> None:
        pass


class Parts(SimpleNamespace):
    store: MemoryTaskStore
    commands: TaskCommands
    client: httpx.AsyncClient


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    store = MemoryTaskStore()
    await store.open()
    bus = EventBus()
    aggregator = StateAggregator(store, bus, node_id=NODE).attach()
    bus.start()
    registry = ExecutableRegistry(EXECUTABLES)
    marker = PublishedMarker(store)
    marker.start()
    submitter = TaskSubmitter(store, registry, Publisher(), marker, bus, aggregator=aggregator, node_id=NODE)
    dead_letters = DeadLetterService(store, registry, bus, submitter, node_id=NODE, default_rate=100.0)
    commands = TaskCommands(store, submitter, bus, dead_letters, node_id=NODE, max_bulk_seconds=60.0)
    app = FastAPI()  # not create_app: only the runtime and the authenticator are in app.state
    app.state.runtime = SimpleNamespace(commands=commands)
    verifier = TokenVerifier.from_settings(PlatformSettings(auth="jwt", jwt_secret=SECRET))
    install_auth(app, Authenticator(verifier))
    app.include_router(tasks_router)
    app.include_router(manage_router)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Parts(store=store, commands=commands, client=client)
    finally:
        await marker.stop()
        await bus.close()
        await store.close()


async def _alices(store: MemoryTaskStore) -> BackgroundTask:
    task = BackgroundTask(task_type="test_noop", user_id="alice")
    await store.create(task)
    return task


async def test_a_router_on_another_app_takes_the_commands_from_the_runtime(parts: Parts) -> None:
    task = await _alices(parts.store)
    r = await parts.client.patch(f"/api/v1/tasks/{task.id}", json={"tags": ["x"]}, headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["x"]


async def test_another_users_task_is_404_for_a_submitter(parts: Parts) -> None:
    task = await _alices(parts.store)
    for method, body in (("PATCH", {"tags": ["x"]}), ("DELETE", None)):
        r = await parts.client.request(method, f"/api/v1/tasks/{task.id}", json=body, headers=BOB)
        assert r.status_code == 404, (method, r.text)
        assert r.json()["detail"] == f"task {task.id!r} not found"
    r = await parts.client.post(f"/api/v1/tasks/{task.id}/cancel", headers=BOB)
    assert r.status_code == 404, r.text
    unchanged = await parts.store.get(task.id)
    assert unchanged is not None and unchanged.status is TaskStatus.QUEUED and unchanged.tags == []


@pytest.mark.parametrize("name", ["find", "cancel", "amend", "delete"])
def test_every_task_command_requires_a_principal(name: str) -> None:
    parameter = inspect.signature(getattr(TaskCommands, name)).parameters["principal"]
    assert parameter.default is inspect.Parameter.empty


async def test_a_command_without_a_principal_is_refused_and_system_sees_every_task(parts: Parts) -> None:
    task = await _alices(parts.store)
    with pytest.raises(TypeError, match="principal"):
        await parts.commands.find(task.id)  # type: ignore[call-arg]
    assert (await parts.commands.find(task.id, SYSTEM)).id == task.id
    assert (await parts.commands.cancel(task.id, SYSTEM)).status is TaskStatus.CANCELLED
