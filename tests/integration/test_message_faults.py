"""A bad message that names a task is a fault of that message, not of the task.

The worker moves such a message to the DLQ with its reason and leaves the task it names as it
was; only the task's own current message (same type, attempt, priority, generation, while the
task waits for it) can take the task down with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
import pytest

from taskplatform.errors import StoreError
from taskplatform.events.models import TaskDeadLettered
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.models.message import HEADER_DEAD_REASON
from taskplatform.runtime import Runtime
from tests.support.executables import Flaky, Noop
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration


async def _publish(
    rabbitmq: Any, runtime: Runtime, body: dict[str, Any], routing_key: str = "test_noop"
) -> None:
    channel = await rabbitmq.channel()
    exchange = await channel.get_exchange(runtime.topology.work_exchange)
    headers = {"x-task-id": body["task_id"], "x-task-type": body["task_type"]}
    await exchange.publish(aio_pika.Message(orjson.dumps(body), headers=headers), routing_key=routing_key)
    await channel.close()


async def _dead_reasons(rabbitmq: Any, runtime: Runtime, n: int) -> list[str]:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.dead_letter_queue, passive=True)
    reasons: list[str] = []

    async def got_all() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            reasons.append(str(message.headers.get(HEADER_DEAD_REASON)))
        return len(reasons) >= n

    await eventually(got_all, timeout=10)
    await channel.close()
    return reasons


async def _is(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    task = await runtime.store.get(task_id)
    return task is not None and task.status is status


async def test_a_message_of_an_unknown_type_naming_a_queued_task_leaves_it_to_its_own_message(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False)  # the DLQ is read here
    task = BackgroundTask(task_type="test_noop", parameters={"value": 4})
    async with running(runtime):
        await runtime.store.create(task)
        forged = TaskMessage.for_task(task).model_copy(update={"task_type": "test_unknown"})
        await _publish(rabbitmq, runtime, forged.model_dump(mode="json"))
        assert await _dead_reasons(rabbitmq, runtime, 1) == ["unknown-task-type"]
        assert await _is(runtime, task.id, TaskStatus.QUEUED)  # untouched
        await runtime.publisher.publish(TaskMessage.for_task(task))  # its own message
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=10)
    assert Noop.calls[task.id] == 1


async def test_a_message_of_an_unknown_type_at_another_priority_leaves_the_task_it_names_alone(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False)
    task = BackgroundTask(task_type="test_noop", parameters={"value": 5})
    async with running(runtime):
        await runtime.store.create(task)
        # Waiting at its attempt: the store's guard alone (the attempt) would allow a dead-letter
        # write. The message names another priority: it is not the task's own.
        forged = TaskMessage.for_task(task).model_copy(update={"task_type": "test_unknown", "priority": 3})
        await _publish(rabbitmq, runtime, forged.model_dump(mode="json"))
        assert await _dead_reasons(rabbitmq, runtime, 1) == ["unknown-task-type"]
        assert await _is(runtime, task.id, TaskStatus.QUEUED)


async def test_a_message_of_another_registered_type_never_claims_the_task_it_names(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False)
    task = BackgroundTask(task_type="test_noop", parameters={"value": 6})
    async with running(runtime):
        await runtime.store.create(task)
        forged = TaskMessage.for_task(task).model_copy(update={"task_type": "test_flaky", "parameters": {}})
        await _publish(rabbitmq, runtime, forged.model_dump(mode="json"), routing_key="test_flaky")
        assert await _dead_reasons(rabbitmq, runtime, 1) == ["task-mismatch"]
        current = await runtime.store.get(task.id)
        assert current is not None and current.status is TaskStatus.QUEUED  # not claimed, not stranded
        await runtime.publisher.publish(TaskMessage.for_task(task))  # its own message runs it
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=10)
    assert Noop.calls[task.id] == 1 and task.id not in Flaky.started


async def test_the_own_message_of_a_task_whose_type_no_worker_knows_dead_letters_the_task(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False)
    # Stored by an API that knows a type this worker does not (a deployment out of step).
    task = BackgroundTask(task_type="test_unknown", parameters={})
    async with running(runtime):
        await runtime.store.create(task)
        await _publish(rabbitmq, runtime, TaskMessage.for_task(task).model_dump(mode="json"))
        assert await _dead_reasons(rabbitmq, runtime, 1) == ["unknown-task-type"]
        await eventually(lambda: _is(runtime, task.id, TaskStatus.DEAD_LETTER), timeout=10)
        dead = await runtime.store.get(task.id)
    assert dead is not None and dead.error_info is not None
    assert dead.error_info.reason == "unknown-task-type" and "test_unknown" in dead.error_info.message


async def test_the_dead_message_still_reaches_the_dlq_when_the_store_refuses_to_mark_its_task(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False, store_outage_hold_seconds=0.3)
    bus_publish = runtime.bus.publish

    async def store_down_for_dead_letters(event: Any, task: Any = None) -> Any:
        if isinstance(event, TaskDeadLettered):
            raise StoreError("store unreachable (injected)")
        return await bus_publish(event, task)

    runtime.bus.publish = store_down_for_dead_letters  # type: ignore[method-assign]
    task = BackgroundTask(task_type="test_unknown", parameters={})
    async with running(runtime):
        await runtime.store.create(task)
        await _publish(rabbitmq, runtime, TaskMessage.for_task(task).model_dump(mode="json"))
        # Moved with its reason (the DLQ consumer marks the task from there), not requeued
        # until the delivery limit strips the reason.
        assert await _dead_reasons(rabbitmq, runtime, 1) == ["unknown-task-type"]
        assert await _is(runtime, task.id, TaskStatus.QUEUED)
