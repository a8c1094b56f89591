"""The gRPC front door's stream and wire, against real RabbitMQ and PostgreSQL with a real client:
WatchTask, requests protobuf cannot parse, bodies too deep for a Struct, per-method metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from taskplatform.grpc_api.server import TASKS_SERVICE
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.runtime import Runtime
from tests.api.tokens import SECRET, bearer
from tests.grpc_api.front import (
    ALICE,
    BOB,
    Front,
    Serve,
    auth,
    refused,
    updates,
)

pytestmark = pytest.mark.integration


async def test_watch_streams_queued_then_running_then_completed_and_ends_with_the_result(
    serve: Serve, make_runtime: Callable[..., Runtime], postgres_database_url: str
) -> None:
    async with serve(consume=False) as front:
        task_id = (await front.create(parameters_json='{"value": 5, "sleep": 0.3}')).task_id
        seen: list[pb.TaskUpdate] = []
        worker = make_runtime(role="worker", store_url=postgres_database_url, auth="jwt", jwt_secret=SECRET)
        async for update in updates(front, task_id):
            seen.append(update)
            if len(seen) == 1:  # the task is QUEUED and watched: now a worker may take it
                assert update.event == "snapshot" and update.status == pb.TASK_STATUS_QUEUED
                assert update.task.id == task_id
                await worker.start()
        await worker.stop(grace=2)
    statuses = [pb.TaskStatus.Name(u.status) for u in seen]
    distinct = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert distinct == ["TASK_STATUS_QUEUED", "TASK_STATUS_RUNNING", "TASK_STATUS_COMPLETED"], statuses
    assert "started" in [u.event for u in seen] and "completed" in [u.event for u in seen]
    assert [u.sequence for u in seen] == sorted(u.sequence for u in seen)  # never goes back
    last = seen[-1]
    assert last.event == "snapshot" and json_format.MessageToDict(last.task.result) == {"value": 5}


async def test_watch_ends_without_events_from_the_store_alone(
    serve: Serve, make_runtime: Callable[..., Runtime], postgres_database_url: str
) -> None:
    async with serve(consume=False) as front:
        task_id = (await front.create(parameters_json="{}")).task_id
        worker = make_runtime(role="worker", store_url=postgres_database_url, events_bridge_enabled=False)
        seen: list[pb.TaskUpdate] = []
        async for update in updates(front, task_id):
            seen.append(update)
            if len(seen) == 1:
                await worker.start()
        await worker.stop(grace=2)
    assert [u.event for u in seen] == ["snapshot", "snapshot"]
    assert seen[-1].status == pb.TASK_STATUS_COMPLETED


async def test_watching_another_users_task_is_not_found(front: Front) -> None:
    bobs = (await front.create(BOB)).task_id
    theirs = await refused(_first(updates(front, bobs, ALICE)))
    assert theirs.code() == grpc.StatusCode.NOT_FOUND and theirs.details() == f"task {bobs!r} not found"
    nobody = front.stub.WatchTask(pb.WatchTaskRequest(task_id=bobs))
    none = await refused(_first(nobody))
    assert none.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watching_a_finished_task_sends_its_state_and_ends(front: Front) -> None:
    done = (await front.create(parameters_json="{}")).task_id
    await front.ended(done)
    seen = [u async for u in updates(front, done)]
    assert len(seen) == 1 and seen[0].event == "snapshot" and seen[0].status == pb.TASK_STATUS_COMPLETED


async def _first(stream: Any) -> Any:
    async for item in stream:
        return item
    return None


async def test_a_struct_nested_past_protobufs_limit_is_invalid_not_internal(front: Front) -> None:
    """A CreateTaskRequest whose Struct nests 200 levels (protobuf parses at most 100), written
    byte by byte: no protobuf library builds one."""
    body = pb.CreateTaskRequest(task_type="test_noop").SerializeToString() + _field(2, _struct(200))
    call = front.channel.unary_unary("/taskplatform.v1.Tasks/CreateTask")
    deep = await refused(call(body, metadata=auth(ALICE), timeout=10))
    assert deep.code() == grpc.StatusCode.INVALID_ARGUMENT, deep
    assert "cannot be parsed" in deep.details()


def _struct(depth: int) -> bytes:
    """A Struct ``{"a": {"a": ... {}}}`` ``depth`` levels deep, encoded."""
    inner = b""
    for _ in range(depth):
        value = _field(5, inner)  # Value.struct_value
        entry = _field(1, b"a") + _field(2, value)  # map entry: key, value
        inner = _field(1, entry)  # Struct.fields
    return inner


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if not n:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


async def test_every_call_is_counted_by_method_and_code_from_zero(front: Front) -> None:
    registry = front.runtime.metrics.registry

    def handled(method: str, code: str, kind: str = "unary") -> float | None:
        labels = {"grpc_type": kind, "grpc_service": TASKS_SERVICE, "grpc_method": method, "grpc_code": code}
        return registry.get_sample_value("grpc_server_handled_total", labels)

    assert handled("CancelTask", "FAILED_PRECONDITION") == 0.0  # there before any call
    assert handled("WatchTask", "OK", "server_stream") == 0.0
    created = await front.create(parameters_json="{}")
    await refused(front.status("no-such-task"))
    await front.ended(created.task_id)
    [_ async for _ in updates(front, created.task_id)]
    await refused(front.stub.GetTaskStatus(pb.GetTaskRequest(task_id="x")))  # no token
    assert handled("CreateTask", "OK") == 1.0
    assert handled("GetTaskStatus", "NOT_FOUND") == 1.0
    assert handled("GetTaskStatus", "UNAUTHENTICATED") == 1.0
    assert (handled("GetTaskStatus", "OK") or 0) >= 1.0
    assert handled("WatchTask", "OK", "server_stream") == 1.0
    started = registry.get_sample_value(
        "grpc_server_started_total",
        {"grpc_type": "unary", "grpc_service": TASKS_SERVICE, "grpc_method": "CreateTask"},
    )
    assert started == 1.0
    count = registry.get_sample_value(
        "grpc_server_handling_seconds_count",
        {"grpc_type": "unary", "grpc_service": TASKS_SERVICE, "grpc_method": "CreateTask"},
    )
    assert count == 1.0


async def test_a_body_nested_deeper_than_a_struct_carries_comes_as_json_text(front: Front) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):  # stored fine (64 levels at most), 120 protobuf levels as a Struct
        deep = {"a": deep}
    r = await front.http.post(
        "/api/v1/tasks", json={"task_type": "test_noop", "metadata": deep}, headers=bearer(ALICE)
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    task = await front.stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=auth(ALICE))
    assert not task.HasField("metadata") and json.loads(task.metadata_json) == deep
    listed = await front.stub.ListTasks(pb.ListTasksRequest(), metadata=auth(ALICE))
    assert task_id in [t.id for t in listed.tasks]  # the page parses too
