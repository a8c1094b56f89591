"""Which dead messages may mark their task DEAD_LETTER (real RabbitMQ and PostgreSQL).

Only the task's own current message — well-formed, of its type, attempt, generation and
priority — while the task waits to run it, has FAILED it, or runs it under a lapsed lease. A
malformed or stale message is recorded as a message-level dead letter linked to the task it
names, and the task goes on: running, waiting for its own message, or finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import pytest

from taskplatform.deadletters.consumer import DeadLetterConsumer
from taskplatform.messaging.codec import encode
from taskplatform.models import (
    BackgroundTask,
    DeadLetter,
    ErrorInfo,
    OutboxState,
    OutboxStatus,
    TaskMessage,
    TaskStatus,
    utcnow,
)
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served
from tests.support.executables import Noop
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration


@pytest.fixture
async def platform(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    postgres_database_url: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """API, worker and DLQ consumer on PostgreSQL; no reaper (tests set lapsed leases)."""
    settings = make_settings(store_url=postgres_database_url, reaper_enabled=False)
    runtime = Runtime(settings, role="dev", registry=registry, consume=True, relay=True)
    async with served(runtime) as app, client_of(app, headers={"X-Operator": "ops"}) as client:
        yield client, runtime


def waiting_task(**fields: Any) -> BackgroundTask:
    """A task waiting for its message, which the test sends (or not): the relay leaves it be."""
    return BackgroundTask(
        task_type="test_noop",
        parameters={"value": fields.pop("value", 1)},
        outbox=OutboxState(status=OutboxStatus.PUBLISHED, published_at=utcnow()),
        **fields,
    )


async def records_of(runtime: Runtime, task_id: str) -> list[DeadLetter]:
    page = await runtime.store.list_dead_letters(DeadLetterFilter(task_id=task_id), limit=100)
    return page.items


async def recorded(runtime: Runtime, task_id: str, *, kind: str = "message", seen: int = 1) -> DeadLetter:
    """The record of ``kind`` naming ``task_id``, once it counts ``seen`` messages."""
    found: list[DeadLetter] = []

    async def there() -> bool:
        found[:] = [r for r in await records_of(runtime, task_id) if r.kind == kind and r.times_seen >= seen]
        return bool(found)

    await eventually(there, timeout=20)
    return found[0]


async def status_of(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


async def publish_malformed(rabbitmq: Any, runtime: Runtime, task_id: str, body: bytes) -> None:
    """A message naming ``task_id`` whose body is not a task message, to the task's work queue:
    a worker dead-letters it (bad-json) and the DLQ consumer records it."""
    channel = await rabbitmq.channel()
    try:
        exchange = await channel.get_exchange(runtime.topology.work_exchange)
        headers = {"x-task-id": task_id, "x-task-type": "test_noop"}
        await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="test_noop")
    finally:
        await channel.close()


def broker_death(runtime: Runtime, reason: str = "delivery_limit") -> dict[str, Any]:
    queue = runtime.topology.queue_for("test_noop")
    return {
        "x-death": [
            {
                "reason": reason,
                "queue": queue,
                "count": 1,
                "exchange": runtime.topology.work_exchange,
                "routing-keys": ["test_noop"],
                "time": datetime.now(UTC).replace(microsecond=0),
            }
        ]
    }


async def publish_dead(rabbitmq: Any, runtime: Runtime, message: TaskMessage) -> None:
    """``message`` straight into the DLQ, as RabbitMQ would dead-letter it."""
    channel = await rabbitmq.channel()
    try:
        await channel.default_exchange.publish(
            encode(message, extra_headers=broker_death(runtime)),
            routing_key=runtime.topology.dead_letter_queue,
        )
    finally:
        await channel.close()


async def test_a_malformed_message_naming_a_running_task_leaves_it_to_complete_with_its_result(
    platform: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    client, runtime = platform
    submitted = await runtime.submitter.submit(
        SubmitRequest(task_type="test_noop", parameters={"value": 7, "sleep": 3})
    )
    task_id = submitted.task.id
    await eventually(lambda: _is(runtime, task_id, TaskStatus.RUNNING), timeout=10)

    await publish_malformed(rabbitmq, runtime, task_id, b"{not json")
    record = await recorded(runtime, task_id)
    assert await status_of(runtime, task_id) is TaskStatus.RUNNING, "captured too late to prove anything"

    await eventually(lambda: _is(runtime, task_id, TaskStatus.COMPLETED), timeout=15)
    done = await runtime.store.get(task_id)
    assert done is not None and done.result == {"value": 7} and Noop.calls[task_id] == 1
    # a message-level dead letter of its own, linked to the task; the task has no record
    assert record.kind == "message" and record.id != task_id and record.task_id == task_id
    assert record.reason == "bad-json" and record.body == "{not json"
    assert [r.id for r in await records_of(runtime, task_id)] == [record.id]
    # and it cannot be used to replay the live (now finished) task
    r = await client.post(f"/api/v1/dead-letters/{record.id}/replay")
    assert r.status_code == 409 and "message-level dead letter" in r.json()["error"]["message"]
    assert "COMPLETED, not dead" in r.json()["error"]["message"]
    audit = (await client.get("/api/v1/dead-letters/audit", params={"dead_letter_id": record.id})).json()
    assert [a["outcome"].split(":")[0] for a in audit["items"]] == ["refused"]
    assert await status_of(runtime, task_id) is TaskStatus.COMPLETED and Noop.calls[task_id] == 1


async def test_a_malformed_message_naming_a_queued_task_leaves_it_waiting_for_its_own_message(
    platform: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    client, runtime = platform
    task = waiting_task(value=3)
    await runtime.store.create(task)

    await publish_malformed(rabbitmq, runtime, task.id, b"\xff\xfe not even UTF-8")
    record = await recorded(runtime, task.id)
    assert record.kind == "message" and record.reason == "bad-json" and record.body_encoding == "base64"
    assert await status_of(runtime, task.id) is TaskStatus.QUEUED  # waiting for its own message
    r = await client.post(f"/api/v1/dead-letters/{record.id}/replay")
    assert r.status_code == 409 and "QUEUED, not dead" in r.json()["error"]["message"]

    await runtime.publisher.publish_task(task)  # its own message arrives, and runs it
    await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=15)
    done = await runtime.store.get(task.id)
    assert done is not None and done.result == {"value": 3} and done.replays == 0


async def test_a_malformed_message_naming_a_finished_task_changes_nothing(
    platform: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    _client, runtime = platform
    submitted = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", parameters={"value": 2}))
    task_id = submitted.task.id
    await eventually(lambda: _is(runtime, task_id, TaskStatus.COMPLETED), timeout=10)
    before = await runtime.store.get(task_id)

    await publish_malformed(rabbitmq, runtime, task_id, b'{"task_id": 5}')
    record = await recorded(runtime, task_id)
    assert record.kind == "message" and record.reason == "invalid-body" and record.id != task_id
    after = await runtime.store.get(task_id)
    assert after is not None and before is not None
    assert (after.status, after.version, after.result) == (TaskStatus.COMPLETED, before.version, {"value": 2})


async def test_valid_dead_messages_that_are_not_the_tasks_current_one_change_nothing(
    platform: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    _client, runtime = platform
    # waiting for attempt 2 of its second life, at priority 5
    queued = waiting_task(retry_count=2, replays=1, priority=5)
    await runtime.store.create(queued)
    current = TaskMessage.for_task(queued)
    stale = [
        current.model_copy(update={"attempt": 1}),  # an earlier attempt's copy
        current.model_copy(update={"generation": 0}),  # a copy from before the replay
        current.model_copy(update={"priority": 0}),  # superseded by a priority change
    ]
    # running attempt 0 under another worker's live lease: a duplicate of its message died
    busy = waiting_task()
    await runtime.store.create(busy)
    lease = utcnow() + timedelta(seconds=60)
    claimed = await runtime.store.try_set_running(busy.id, attempt=0, node_id="elsewhere", lease_until=lease)
    assert claimed is not None
    for message in [*stale, TaskMessage.for_task(busy)]:
        await publish_dead(rabbitmq, runtime, message)

    await recorded(runtime, queued.id, kind="task", seen=3)
    await recorded(runtime, busy.id, kind="task")
    after = await runtime.store.get(queued.id)
    assert after is not None and after.status is TaskStatus.QUEUED and after.version == queued.version
    still = await runtime.store.get(busy.id)
    assert still is not None and still.status is TaskStatus.RUNNING and still.version == claimed.version


async def test_the_current_message_of_a_failed_task_or_one_whose_lease_lapsed_marks_it_dead(
    platform: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    _client, runtime = platform
    # FAILED at attempt 0: the settler wrote TaskFailed, TaskDeadLettered never landed
    failed = waiting_task()
    await runtime.store.create(failed)
    lease = utcnow() + timedelta(seconds=60)
    assert await runtime.store.try_set_running(failed.id, attempt=0, node_id="gone", lease_until=lease)
    error = ErrorInfo(type="ValueError", message="boom", reason="non-retryable")
    assert await runtime.store.record_failure(
        failed.id, node_id="gone", attempt=0, error=error, status=TaskStatus.FAILED
    )
    # RUNNING attempt 0 under a lease that lapsed: its worker is gone
    lapsed = waiting_task()
    await runtime.store.create(lapsed)
    past = utcnow() - timedelta(seconds=30)
    assert await runtime.store.try_set_running(lapsed.id, attempt=0, node_id="gone", lease_until=past)
    for task in (failed, lapsed):
        await publish_dead(rabbitmq, runtime, TaskMessage.for_task(task))

    await eventually(lambda: _is(runtime, failed.id, TaskStatus.DEAD_LETTER), timeout=20)
    await eventually(lambda: _is(runtime, lapsed.id, TaskStatus.DEAD_LETTER), timeout=20)
    dead = await runtime.store.get(failed.id)
    assert dead is not None and dead.error_info is not None and dead.error_info.message == "boom"
    record = await recorded(runtime, failed.id, kind="task")
    assert record.id == failed.id and record.reason == "non-retryable"


async def test_the_tasks_own_message_dead_lettered_by_the_delivery_limit_marks_it_dead_and_it_can_be_replayed(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, postgres_database_url: str
) -> None:
    # the API side only: nobody consumes the work queue but the test, which keeps requeueing
    api = make_runtime(role="api", consume=False, store_url=postgres_database_url, delivery_limit=1)
    async with running(api):
        dlq = DeadLetterConsumer(
            api.broker,
            api.topology.dead_letter_queue,
            api.store,
            api.bus,
            node_id="dlq",
            publisher=api.publisher,
            parking_queue=api.topology.parking_queue,
        )
        await dlq.start()
        try:
            submitted = await api.submitter.submit(
                SubmitRequest(task_type="test_noop", parameters={"value": 9})
            )
            task_id = submitted.task.id
            await _requeue_until_dead(rabbitmq, api.topology.queue_for("test_noop") or "")
            await eventually(lambda: _is(api, task_id, TaskStatus.DEAD_LETTER), timeout=20)
            record = await recorded(api, task_id, kind="task")
            assert record.id == task_id and record.reason == "delivery_limit"
            assert record.x_death[0].reason == "delivery_limit"
            replayed = await api.dead_letters.replay(record.id, actor="ops")
            assert replayed.task.status is TaskStatus.QUEUED and replayed.task.replays == 1
        finally:
            await dlq.stop()
    worker = make_runtime(store_url=postgres_database_url, delivery_limit=1)
    async with running(worker):
        await eventually(lambda: _is(worker, task_id, TaskStatus.COMPLETED), timeout=15)
        done = await worker.store.get(task_id)
    assert done is not None and done.result == {"value": 9} and done.replays == 1


async def _requeue_until_dead(rabbitmq: Any, queue_name: str) -> None:
    """Take the queue's message and give it back until the delivery limit dead-letters it."""
    channel = await rabbitmq.channel()
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
        deliveries = 0
        for _ in range(200):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                if deliveries:
                    return  # dead-lettered
                await asyncio.sleep(0.05)
                continue
            deliveries += 1
            await message.nack(requeue=True)
        raise AssertionError("the message was never dead-lettered")
    finally:
        await channel.close()


async def _is(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    return await status_of(runtime, task_id) is status
