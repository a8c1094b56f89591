"""The load the live stack is driven with (``live_stack.py``): tasks through the HTTP API that
complete, retry, exhaust their attempts or fail for good; reads over gRPC; poison messages
straight to the work queue. It records on ``Live`` what it provoked, for the tests to compare."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import aio_pika
import grpc
import httpx

from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from taskplatform.models import TaskMessage
from taskplatform.runtime import build_platform_topology, build_registry
from taskplatform.settings import PlatformSettings
from tests.support.services import RABBITMQ_URL

if TYPE_CHECKING:
    from tests.deploy.live_stack import Live


async def drive(live: Live, api: str, grpc_target: str, settings: PlatformSettings) -> list[str]:
    """The load: tasks through the API, reads over gRPC, poison messages straight to the work
    queue."""
    requests: list[dict[str, Any]] = [
        {"task_type": "test_noop", "parameters": {"value": i}} for i in range(20)
    ]
    requests += [{"task_type": "test_flaky", "parameters": {"fail_times": 1}}] * 5  # retried once
    requests += [{"task_type": "test_flaky", "parameters": {"fail_times": 10}}] * 3  # attempts-exhausted
    requests += [{"task_type": "test_boom", "parameters": {"value": i}} for i in range(4)]  # non-retryable
    requests += [{"task_type": "test_picky", "parameters": {"value": -i - 1}} for i in range(2)]  # permanent
    live.provoked |= {"attempts-exhausted", "non-retryable", "permanent-failure"}
    ids = []
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for body in requests:
            response = await client.post("/api/v1/tasks", json=body)
            assert response.status_code in (201, 202), response.text
            ids.append(response.json()["task_id"])
        for path in ("/docs", "/openapi.json"):
            assert (await client.get(path)).status_code == 200
    live.submitted = len(ids)
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.TasksStub(channel)
        for task_id in ids[:3]:
            await stub.GetTaskStatus(pb.GetTaskRequest(task_id=task_id), timeout=30)
        await stub.ListTasks(pb.ListTasksRequest(limit=5), timeout=30)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.GetTask(pb.GetTaskRequest(task_id="no-such-task"), timeout=30)
    live.grpc_calls = {"GetTaskStatus OK": 3, "ListTasks OK": 1, "GetTask NOT_FOUND": 1}
    live.dead_tasks = sum(1 for r in requests if r["task_type"] in ("test_boom", "test_picky")) + 3

    topology = build_platform_topology(settings, build_registry(settings))
    routing_key = topology.routing_key_for("test_noop")

    def message(body: bytes, **headers: Any) -> aio_pika.Message:
        return aio_pika.Message(body, headers=headers or None, message_id=uuid.uuid4().hex)

    def naming_a_missing_task(task_type: str = "test_noop") -> TaskMessage:
        return TaskMessage(task_id=f"missing-{uuid.uuid4().hex}", task_type=task_type)

    def headers_of(task: TaskMessage) -> dict[str, Any]:
        return {"x-task-id": task.task_id, "x-task-type": task.task_type}

    def body_of(task: TaskMessage) -> bytes:
        return task.model_dump_json().encode()

    # each names a task of its own (a record is per task id, or per content for a malformed one)
    named = [naming_a_missing_task() for _ in range(5)]
    nobody = naming_a_missing_task("test_nobody_knows")
    poison = [
        (message(b'{"task_id": "half', **headers_of(named[0])), "bad-json"),
        # the same message again: it dies again, on its own
        (message(b'{"task_id": "half', **headers_of(named[0])), "bad-json"),
        (message(body_of(named[1])), "missing-header"),
        (message(b"[1, 2, 3]", **headers_of(named[2])), "invalid-body"),
        (message(body_of(named[4]), **headers_of(named[3])), "header-mismatch"),
        (message(body_of(named[4]), **headers_of(named[4])), "unknown-task"),
        (message(body_of(nobody), **headers_of(nobody)), "unknown-task-type"),
    ]
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.work_exchange)
        for item, reason in poison:
            await exchange.publish(item, routing_key=routing_key, mandatory=True)
            live.provoked.add(reason)
            live.poison.append(reason)
    finally:
        await connection.close()
    return ids
