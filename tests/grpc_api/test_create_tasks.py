"""``CreateTasks`` against the real front door: many tasks in one call, all or nothing, each item
at fault named by its index (``tasks[INDEX].FIELD``), HTTP bulk's roles, keys and rate limit."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from taskplatform.agent import agent_executable
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.submission import MAX_BULK_TASKS
from taskplatform.tasks.registry import ExecutableRegistry
from tests.grpc_api.front import ADA, ALICE, Front, Serve, auth, refused, violations
from tests.support.executables import EXECUTABLES

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path) -> ExecutableRegistry:
    """The test executables and ``run_command``, a type kept for the operator role."""
    commands = tmp_path / "commands.json"
    commands.write_text(json.dumps({"commands": [{"name": "hello", "argv": ["/bin/echo", "hello"]}]}))
    return ExecutableRegistry([*EXECUTABLES, agent_executable(commands)])


def noop(value: int = 0, **fields: object) -> pb.CreateTaskRequest:
    return pb.CreateTaskRequest(task_type="test_noop", parameters_json=f'{{"value": {value}}}', **fields)  # type: ignore[arg-type]


async def create_many(front: Front, *tasks: pb.CreateTaskRequest, who: str = ALICE) -> pb.CreateTasksResponse:
    reply: pb.CreateTasksResponse = await front.stub.CreateTasks(
        pb.CreateTasksRequest(tasks=tasks), metadata=auth(who), timeout=20
    )
    return reply


async def stored(front: Front, tag: str) -> list[pb.Task]:
    page = await front.stub.ListTasks(
        pb.ListTasksRequest(tags=[tag], limit=500), metadata=auth(ADA), timeout=10
    )
    return list(page.tasks)


async def test_many_tasks_in_one_call_are_created_in_order_and_run(front: Front) -> None:
    reply = await create_many(front, *(noop(i, tags=["many"]) for i in range(5)))
    assert [r.created and r.published for r in reply.results] == [True] * 5
    assert len({r.task_id for r in reply.results}) == 5
    for i, result in enumerate(reply.results):
        ended = await front.ended(result.task_id)
        assert ended.status == pb.TASK_STATUS_COMPLETED and dict(ended.result) == {"value": i}
        r = await front.http.get(
            f"/api/v1/tasks/{result.task_id}", headers={"Authorization": f"Bearer {ALICE}"}
        )
        assert r.json()["user_id"] == "alice" and r.json()["tags"] == ["many"]


async def test_one_bad_item_refuses_the_call_naming_every_item_at_fault(front: Front) -> None:
    bad = await refused(
        create_many(
            front,
            noop(1, tags=["refused"]),
            pb.CreateTaskRequest(task_type="no_such_type", tags=["refused"]),
            pb.CreateTaskRequest(task_type="test_noop", parameters_json='{"value": "x"}', tags=["refused"]),
            noop(3, priority=99, tags=["refused"]),
            pb.CreateTaskRequest(task_type="test_noop", parameters_json="[1", tags=["refused"]),
            noop(5, idempotency_key="k\x00", tags=["refused"]),
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5 of the submitted tasks are invalid, nothing was stored" in bad.details()
    fields = violations(bad)
    assert set(fields) == {
        "tasks[1].task_type",
        "tasks[2].parameters.value",
        "tasks[3].priority",
        "tasks[4].parameters_json",
        "tasks[5].idempotency_key",
    }, fields
    assert await stored(front, "refused") == []  # the valid item was not stored either


async def test_roles_and_owners_are_checked_item_by_item(front: Front) -> None:
    foreign = await refused(create_many(front, noop(0), noop(1, user_id="bob")))
    assert foreign.code() == grpc.StatusCode.PERMISSION_DENIED
    assert set(violations(foreign)) == {"tasks[1].user_id"}
    command = pb.CreateTaskRequest(task_type="run_command", parameters_json='{"template": "hello"}')
    beyond = await refused(create_many(front, noop(0), command))
    assert beyond.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator role" in violations(beyond)["tasks[1].task_type"]
    for_bob = await create_many(front, noop(0, user_id="bob", tags=["for-bob"]), who=ADA)  # an admin may
    [task] = await stored(front, "for-bob")
    assert task.id == for_bob.results[0].task_id and task.user_id == "bob"


async def test_idempotency_keys_item_by_item(front: Front) -> None:
    first = await create_many(
        front, noop(1, idempotency_key="grpc-bulk-1"), noop(2, idempotency_key="grpc-bulk-2")
    )
    again = await create_many(
        front, noop(1, idempotency_key="grpc-bulk-1"), noop(3, idempotency_key="grpc-bulk-3")
    )
    assert [r.created for r in again.results] == [False, True]
    assert again.results[0].task_id == first.results[0].task_id
    reused = await refused(create_many(front, noop(9, idempotency_key="grpc-bulk-2")))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS and "tasks[0]" in next(iter(violations(reused)))
    twice = await refused(
        create_many(front, noop(1, idempotency_key="grpc-bulk-9"), noop(2, idempotency_key="grpc-bulk-9"))
    )
    assert twice.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("count", [0, MAX_BULK_TASKS + 1])
async def test_a_call_holds_1_to_the_most_tasks(front: Front, count: int) -> None:
    wrong = await refused(create_many(front, *([noop()] * count)))
    assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"send 1 to {MAX_BULK_TASKS:,} tasks per request, not {count:,}" in wrong.details()
    assert "tasks" in violations(wrong)


async def test_the_rate_limit_is_charged_every_task_of_the_call(serve: Serve) -> None:
    async with serve(api_submit_rate="3/minute", api_submit_burst=3) as front:
        heavy = await refused(create_many(front, *([noop()] * 4)))
        assert heavy.code() == grpc.StatusCode.INVALID_ARGUMENT and "burst" in heavy.details()
        await create_many(front, noop(), noop())
        limited = await refused(create_many(front, noop(), noop()))  # 2 more than the 1 left
        assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await create_many(front, noop())  # the last one of the burst
