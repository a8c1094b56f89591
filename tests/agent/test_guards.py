"""``run_command``'s guards outside the runner: only operators submit it (single and bulk routes),
it is never a sub-task, and it runs at most once (a shutdown mid-command dead-letters it; a copy
of a started attempt is not run; a lost worker's attempt is dead-lettered, not retried)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskplatform.agent import agent_executable
from taskplatform.agent.executable import RunCommand
from taskplatform.errors import InvalidInputError, StoreError
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.deadletters import AuditFilter
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.once import started_elsewhere
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served
from tests.support.executables import EXECUTABLES
from tests.support.runtime import eventually, running

OLGA = bearer(token("olga", "operator"))
ALICE = bearer(token("alice"))


def commands_file(tmp_path: Path) -> Path:
    path = tmp_path / "commands.json"
    path.write_text(
        json.dumps(
            {
                "commands": [
                    {"name": "hello", "argv": ["/bin/echo", "hello"]},
                    {"name": "nap", "argv": ["/bin/sleep", "30"], "timeout_seconds": 60},
                ]
            }
        )
    )
    return path


@pytest.fixture
def agent_registry(tmp_path: Path) -> ExecutableRegistry:
    return ExecutableRegistry([*EXECUTABLES, agent_executable(commands_file(tmp_path))])


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], agent_registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, reaper_enabled=False)
    runtime = Runtime(settings, role="api", registry=agent_registry, relay=False, store=MemoryTaskStore())
    async with served(runtime) as app, client_of(app) as client:
        yield client, runtime


COMMAND = {"task_type": "run_command", "parameters": {"template": "hello", "args": {}}}


@pytest.mark.integration
async def test_a_submitter_may_not_submit_a_command_and_an_operator_may(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    refused = await client.post("/api/v1/tasks", json=COMMAND, headers=ALICE)
    assert refused.status_code == 403
    assert "'run_command' may be submitted by the operator role" in refused.json()["error"]["message"]
    assert await runtime.store.count_by_status() == {}
    accepted = await client.post("/api/v1/tasks", json=COMMAND, headers=OLGA)
    assert accepted.status_code in (201, 202)
    submits = (await runtime.store.list_audit(AuditFilter(action="submit"))).items
    assert [(e.actor, e.task_ids, e.outcome.split(":")[0]) for e in submits] == [
        ("olga", [accepted.json()["task_id"]], "ok"),
        ("alice", [], "refused"),  # the refusal is on record too
    ]
    assert "'run_command' may be submitted by the operator role" in submits[1].outcome


@pytest.mark.integration
async def test_a_bulk_submission_holding_a_command_is_refused_whole_for_a_submitter(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    plain = {"task_type": "test_noop", "parameters": {}}
    body = {"tasks": [plain, COMMAND, plain, COMMAND]}
    refused = await client.post("/api/v1/tasks/bulk", json=body, headers=ALICE)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert [d["index"] for d in error["details"]] == [1, 3]
    assert error["details"][0]["loc"] == ["tasks", 1, "task_type"]
    assert await runtime.store.count_by_status() == {}  # nothing stored
    assert (await client.post("/api/v1/tasks/bulk", json=body, headers=OLGA)).status_code in (201, 202)
    olga, alice = (await runtime.store.list_audit(AuditFilter(action="submit"))).items
    assert (olga.actor, len(olga.task_ids), olga.outcome) == ("olga", 4, "ok")
    assert (alice.actor, alice.task_ids) == ("alice", []) and alice.outcome.startswith("refused: items 1, 3:")


async def test_a_command_is_never_a_sub_task(agent_registry: ExecutableRegistry) -> None:
    from taskplatform.events.bus import EventBus
    from taskplatform.outbox import PublishedMarker
    from taskplatform.submission import TaskSubmitter
    from taskplatform.testing.broker import FakePublisher

    store = MemoryTaskStore()
    await store.open()
    submitter = TaskSubmitter(store, agent_registry, FakePublisher(), PublishedMarker(store), EventBus())
    parent = BackgroundTask(task_type="test_noop")
    child = BackgroundTask(task_type="run_command", parent_task_id=parent.id)
    with pytest.raises(InvalidInputError, match="cannot be a sub-task"):
        await submitter.submit_children([child])
    assert await store.get(child.id) is None
    await store.close()


class Recorder:
    """A settler standing in for the real one: records skips."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    async def skip(self, message: Any, why: str) -> None:
        self.skipped.append(why)


class Outage(MemoryTaskStore):
    async def get(self, task_id: str) -> BackgroundTask | None:
        raise StoreError("the store is unreachable (test)")


async def test_a_copy_of_a_started_attempt_is_acked_unrun_and_only_that() -> None:
    store = MemoryTaskStore()
    await store.open()
    task = BackgroundTask(task_type="run_command")
    await store.create(task)
    message = TaskMessage.for_task(task)
    settler = Recorder()
    assert not await started_elsewhere(store, settler, None, message)  # type: ignore[arg-type]  # QUEUED
    lease = store.now() + timedelta(seconds=30)
    assert await store.try_set_running(task.id, attempt=0, node_id="gone", lease_until=lease) is not None
    assert await started_elsewhere(store, settler, None, message)  # type: ignore[arg-type]
    assert "attempt 0 started already (on gone)" in settler.skipped[0]
    later = message.model_copy(update={"attempt": 1})
    assert not await started_elsewhere(store, settler, None, later)  # type: ignore[arg-type]
    outage = Outage()
    await outage.open()
    assert not await started_elsewhere(outage, settler, None, message)  # type: ignore[arg-type]
    assert len(settler.skipped) == 1
    await store.close()
    await outage.close()


@pytest.mark.integration
async def test_a_shutdown_mid_command_dead_letters_it_instead_of_handing_it_back(
    make_settings: Callable[..., PlatformSettings], agent_registry: ExecutableRegistry, rabbitmq: Any
) -> None:
    worker = Runtime(make_settings(), role="worker", registry=agent_registry, consume=True, relay=False)
    task = BackgroundTask(task_type="run_command", parameters={"template": "nap", "args": {}})
    async with running(worker):
        await worker.store.create(task)
        await worker.publisher.publish(TaskMessage.for_task(task))

        async def started() -> bool:
            current = await worker.store.get(task.id)
            return current is not None and current.status is TaskStatus.RUNNING

        await eventually(started, timeout=20)
        await worker.consumer.stop(grace=0)  # type: ignore[union-attr]
        done = await worker.store.get(task.id)
    assert done is not None and done.status is TaskStatus.DEAD_LETTER  # not QUEUED again
    assert done.error_info is not None and done.error_info.type == "InterruptedByShutdown"
    assert "runs at most once" in done.error_info.message


def test_run_command_declares_its_guards() -> None:
    assert RunCommand.at_most_once and RunCommand.submit_role is not None
    assert RunCommand.submit_role.value == "operator"
