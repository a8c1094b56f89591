"""The core pipeline against real RabbitMQ: submit -> store -> broker -> executable -> COMPLETED."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aio_pika
import orjson
import pytest

from taskplatform.errors import UnroutableError
from taskplatform.models import BackgroundTask, OutboxStatus, TaskMessage, TaskStatus, utcnow
from taskplatform.models.message import HEADER_DEAD_DETAIL, HEADER_DEAD_REASON
from taskplatform.runtime import Runtime
from taskplatform.store.base import Guard
from taskplatform.submission import SubmitRequest
from tests.support.executables import Noop
from tests.support.runtime import eventually, running
from tests.support.services import amqp_url_via, rabbitmq_address
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

TEXT = (
    "Quorum queues replicate messages across nodes. Publisher confirms tell the producer a message is safe. "
    "The weather was pleasant. Quorum queues with publisher confirms give durable delivery."
)


async def status_of(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_submitted_task_completes_with_its_result(
    make_runtime: Callable[..., Runtime],
    backend: str,
    request: pytest.FixtureRequest,
    rabbitmq: Any,
) -> None:
    overrides = {}
    if backend == "postgresql":
        overrides["store_url"] = request.getfixturevalue("postgres_database_url")
    runtime = make_runtime(role="dev", relay=True, **overrides)
    async with running(runtime):
        submitted = await runtime.submitter.submit(
            SubmitRequest(task_type="generate_summary", parameters={"text": TEXT, "max_sentences": 2})
        )
        assert submitted.published
        await eventually(lambda: _is(runtime, submitted.task.id, TaskStatus.COMPLETED))
        task = await runtime.store.get(submitted.task.id)
        assert task is not None and task.result is not None
        assert len(task.result["sentences"]) == 2
        assert "Quorum queues" in task.result["summary"]
        assert task.started_at is not None and task.completed_at is not None
        assert task.execution_node_id == runtime.settings.node_id
        await runtime.marker.flush()
        task = await runtime.store.get(submitted.task.id)
        assert task is not None and task.outbox.status is OutboxStatus.PUBLISHED


async def _is(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    return await status_of(runtime, task_id) is status


async def test_submit_while_broker_unreachable_is_accepted_then_relayed_and_completed(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    proxy = TcpProxy(*rabbitmq_address())  # closed: the broker is unreachable
    url = amqp_url_via("127.0.0.1", proxy.port)
    runtime = make_runtime(role="dev", relay=True, amqp_url=url)
    runtime.broker._retry_interval = 0.2
    async with running(runtime, wait_for_broker=False):
        submitted = await runtime.submitter.submit(
            SubmitRequest(task_type="generate_summary", parameters={"text": TEXT, "max_sentences": 1})
        )
        assert not submitted.published
        await asyncio.sleep(0.5)
        stored = await runtime.store.get(submitted.task.id)
        assert stored is not None
        assert stored.status is TaskStatus.QUEUED and stored.outbox.status is OutboxStatus.PENDING

        await proxy.open()  # the broker comes back
        try:
            await eventually(lambda: _is(runtime, submitted.task.id, TaskStatus.COMPLETED), timeout=15)
            done = await runtime.store.get(submitted.task.id)
            assert done is not None and done.outbox.status is OutboxStatus.PUBLISHED
            assert done.result is not None and done.result["sentence_indices"]
        finally:
            await runtime.stop(grace=1)
            await proxy.close()


async def _publish_twice(runtime: Runtime, tasks: list[BackgroundTask]) -> None:
    await runtime.store.create_many(tasks)
    messages = [TaskMessage.for_task(t) for t in tasks]
    for _ in range(2):
        results = await runtime.publisher.publish_many(messages)
        assert results == [None] * len(messages)


async def test_same_message_delivered_twice_runs_the_executable_once(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    runtime = make_runtime()
    tasks = [BackgroundTask(task_type="test_noop", parameters={"value": i, "sleep": 0.05}) for i in range(20)]
    async with running(runtime):
        await _publish_twice(runtime, tasks)
        await eventually(lambda: _all_done(runtime, tasks))
        assert runtime.consumer is not None
        await eventually(lambda: _consumed(runtime, 40))
    for t in tasks:
        assert Noop.calls[t.id] == 1, f"task {t.id} ran {Noop.calls[t.id]} times"


async def _all_done(runtime: Runtime, tasks: list[BackgroundTask]) -> bool:
    counts = await runtime.store.count_by_status()
    return counts.get(TaskStatus.COMPLETED, 0) == len(tasks)


async def _consumed(runtime: Runtime, n: int) -> bool:
    return runtime.consumer is not None and runtime.consumer.processed >= n


async def test_two_workers_racing_on_duplicates_complete_each_task_once(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    a = make_runtime(node_id="worker-a")
    b = make_runtime(node_id="worker-b")
    tasks = [BackgroundTask(task_type="test_noop", parameters={"value": i, "sleep": 0.02}) for i in range(40)]
    async with running(a), running(b):
        await _publish_twice(a, tasks)
        await eventually(lambda: _all_done(a, tasks), timeout=20)
        await eventually(lambda: _total_consumed(a, b, 80), timeout=20)
        nodes = {t.execution_node_id for t in [await a.store.get(t.id) for t in tasks] if t}
    assert all(Noop.calls[t.id] == 1 for t in tasks), {t.id: Noop.calls[t.id] for t in tasks}
    assert nodes <= {"worker-a", "worker-b"}


async def _total_consumed(a: Runtime, b: Runtime, n: int) -> bool:
    assert a.consumer is not None and b.consumer is not None
    return a.consumer.processed + b.consumer.processed >= n


async def _dlq_messages(connection: Any, queue_name: str, expected: int) -> list[Any]:
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)
    got: list[Any] = []
    for _ in range(100):
        msg = await queue.get(no_ack=True, fail=False)
        if msg is None:
            if len(got) >= expected:
                break
            await asyncio.sleep(0.1)
            continue
        got.append(msg)
    await channel.close()
    return got


async def test_malformed_messages_go_to_the_dlq_with_a_reason_and_the_worker_keeps_consuming(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False)  # read the DLQ itself here
    async with running(runtime):
        topo = runtime.topology
        channel = await rabbitmq.channel()
        exchange = await channel.get_exchange(topo.work_exchange)
        good_body = TaskMessage(task_id="x", task_type="test_noop").model_dump(mode="json")
        bad = [
            (b"{not json", {"x-task-id": "m1", "x-task-type": "test_noop"}),
            (orjson.dumps(good_body), {"x-task-type": "test_noop"}),  # no task id header
            (orjson.dumps({"task_id": "m3"}), {"x-task-id": "m3", "x-task-type": "test_noop"}),  # no type
            (  # well formed, but a type no worker here knows
                orjson.dumps({"task_id": "m4", "task_type": "test_unknown"}),
                {"x-task-id": "m4", "x-task-type": "test_unknown"},
            ),
        ]
        for body, headers in bad:
            await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="test_noop")
        await channel.close()
        dead = await _dlq_messages(rabbitmq, topo.dead_letter_queue, 4)
        reasons = sorted(m.headers[HEADER_DEAD_REASON] for m in dead)
        assert reasons == ["bad-json", "invalid-body", "missing-header", "unknown-task-type"]
        assert all(m.headers[HEADER_DEAD_DETAIL] for m in dead)

        ok = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", parameters={"value": 7}))
        await eventually(lambda: _is(runtime, ok.task.id, TaskStatus.COMPLETED))


async def test_failing_executable_dead_letters_the_task_and_its_message(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    runtime = make_runtime(dlq_consumer_enabled=False)  # read the DLQ itself here
    async with running(runtime):
        sub = await runtime.submitter.submit(SubmitRequest(task_type="test_boom", parameters={"value": 3}))
        await eventually(lambda: _is(runtime, sub.task.id, TaskStatus.DEAD_LETTER))
        task = await runtime.store.get(sub.task.id)
        assert task is not None and task.error_info is not None
        assert task.error_info.type == "ValueError" and task.error_info.message == "boom 3"
        assert "Traceback" in (task.error_info.traceback or "")
        dead = await _dlq_messages(rabbitmq, runtime.topology.dead_letter_queue, 1)
        assert len(dead) == 1 and dead[0].headers["x-task-id"] == sub.task.id
        assert dead[0].headers["x-death"][0]["reason"] == "rejected"


async def test_publishing_a_task_type_without_a_bound_queue_raises_unroutable(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    runtime = make_runtime(role="api", consume=False)
    async with running(runtime):
        with pytest.raises(UnroutableError, match="no queue is bound"):
            await runtime.publisher.publish(TaskMessage(task_id="t1", task_type="not_bound_anywhere"))


async def test_broker_lost_mid_life_consumers_resume_and_the_outbox_catches_up(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    proxy = TcpProxy(*rabbitmq_address())
    await proxy.open()
    url = amqp_url_via("127.0.0.1", proxy.port)
    runtime = make_runtime(role="dev", relay=True, amqp_url=url)
    try:
        async with running(runtime):
            before = await runtime.submitter.submit(
                SubmitRequest(task_type="test_noop", parameters={"value": 1})
            )
            await eventually(lambda: _is(runtime, before.task.id, TaskStatus.COMPLETED))

            await proxy.close()  # every connection cut, nothing listening
            await eventually(lambda: _not_connected(runtime), timeout=5)
            during = await runtime.submitter.submit(
                SubmitRequest(task_type="test_noop", parameters={"value": 2})
            )
            assert not during.published

            await proxy.open()  # the broker is back: reconnect, restore the consumer, relay
            await eventually(lambda: _is(runtime, during.task.id, TaskStatus.COMPLETED), timeout=30)
            after = await runtime.submitter.submit(
                SubmitRequest(task_type="test_noop", parameters={"value": 3})
            )
            assert after.published
            await eventually(lambda: _is(runtime, after.task.id, TaskStatus.COMPLETED), timeout=10)
    finally:
        await proxy.close()


async def _not_connected(runtime: Runtime) -> bool:
    return not runtime.broker.is_connected


async def test_long_task_keeps_its_lease_so_a_late_duplicate_cannot_run_it_again(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    # prefetch 1: while busy, node-a cannot take the duplicate, so node-b gets it
    a = make_runtime(node_id="node-a", lease_seconds=0.6, prefetch=1)
    b = make_runtime(node_id="node-b", lease_seconds=0.6)
    task = BackgroundTask(task_type="test_noop", parameters={"value": 1, "sleep": 2.5})
    async with running(a):
        await a.store.create(task)
        await a.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(a, task.id, TaskStatus.RUNNING))
        async with running(b):
            await asyncio.sleep(1.5)  # well past the first lease: only renewals keep it
            await b.publisher.publish(TaskMessage.for_task(task))  # a late duplicate
            await eventually(lambda: _is(a, task.id, TaskStatus.COMPLETED), timeout=10)
            await eventually(lambda: _consumed(b, 1))  # node-b saw the duplicate and let it go
        done = await a.store.get(task.id)
    assert done is not None and done.execution_node_id == "node-a"
    assert Noop.calls[task.id] == 1


async def test_message_redelivered_after_its_owner_died_is_taken_over_when_the_lease_lapses(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    api = make_runtime(role="api", consume=False, node_id="api")
    task = BackgroundTask(task_type="test_noop", parameters={"value": 5})
    async with running(api):
        await api.store.create(task)
        # A worker claimed it and died: its lease runs 1 s more and is never renewed.
        lease = utcnow() + timedelta(seconds=1)
        assert await api.store.try_set_running(task.id, attempt=0, node_id="dead", lease_until=lease)
        await api.publisher.publish(TaskMessage.for_task(task))
        # Its channel held the message unacked and went away: RabbitMQ redelivers it.
        channel = await rabbitmq.channel()
        queue = await channel.declare_queue(api.topology.work_queues[0].queue, passive=True)
        held = await queue.get(no_ack=False, fail=True)
        assert held is not None
        await channel.close()

        worker = make_runtime(node_id="node-b")
        async with running(worker):
            # the copy waits for the dead owner's lease, then a hold: slow on a loaded machine
            await eventually(lambda: _is(api, task.id, TaskStatus.COMPLETED), timeout=30)
            done = await api.store.get(task.id)
    assert done is not None and done.execution_node_id == "node-b"
    assert Noop.calls[task.id] == 1


async def test_a_claim_lost_by_the_store_makes_the_message_come_back_not_vanish(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
) -> None:
    runtime = make_runtime()
    task = BackgroundTask(task_type="test_noop", parameters={"value": 9, "sleep": 0.5})
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(runtime, task.id, TaskStatus.RUNNING))
        # The store loses the claim (a crash before an asynchronous commit was flushed).
        lost = await runtime.store._guarded_update(
            task.id,
            Guard(statuses=frozenset({TaskStatus.RUNNING})),
            {"status": TaskStatus.QUEUED, "execution_node_id": None, "lease_until": None},
        )
        assert lost is not None
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=10)
    assert Noop.calls[task.id] == 2  # at-least-once: it ran again rather than being lost
