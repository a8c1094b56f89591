"""Failure semantics against real RabbitMQ: delayed retries, exhausted attempts, timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from taskplatform.auth import SYSTEM
from taskplatform.errors import StoreError
from taskplatform.models import BackgroundTask, OutboxState, OutboxStatus, TaskMessage, TaskStatus, utcnow
from taskplatform.runtime import Runtime
from taskplatform.store import create_store
from taskplatform.store.base import Guard
from tests.support.executables import Cooperative, Flaky, Noop
from tests.support.runtime import eventually, running
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


async def _status(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


async def _tier_depth(rabbitmq: Any, runtime: Runtime) -> int:
    """Messages waiting in the delay tiers."""
    channel = await rabbitmq.channel()
    total = 0
    for tier in runtime.topology.delay_tiers:
        queue = await channel.declare_queue(tier.queue, passive=True)
        total += int(queue.declaration_result.message_count)
    await channel.close()
    return total


async def test_retryable_failure_twice_then_success_waits_the_policy_delays_with_nothing_unacked(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime()
    task = BackgroundTask(task_type="test_flaky", parameters={"fail_times": 2})
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(runtime, task.id, TaskStatus.RETRYING))
        # While it waits, the message sits in a delay tier and the worker holds nothing.
        assert runtime.consumer is not None
        consumer = runtime.consumer

        async def holds_nothing() -> bool:  # RETRYING is stored before the delivery is settled
            return consumer.in_flight == 0

        await eventually(holds_nothing, timeout=0.8, every=0.01)  # the next attempt comes at 1 s
        assert await _tier_depth(rabbitmq, runtime) == 1
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=15)
        done = await runtime.store.get(task.id)
    assert done is not None and done.retry_count == 2 and done.result == {"value": 3}
    assert done.error_info is not None and done.error_info.type == "FlakyError"
    starts = Flaky.started[task.id]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    policy = Flaky.retry_policy
    assert policy is not None
    expected = [policy.delay_after(0), policy.delay_after(1)]  # 1 s, 2 s
    assert len(gaps) == 2
    for gap, want in zip(gaps, expected, strict=True):
        assert abs(gap - want) <= max(0.1 * want, 1.0), (gaps, expected)


async def test_timeout_is_retried_then_dead_lettered_when_attempts_run_out(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime()
    task = BackgroundTask(task_type="test_slow", parameters={"sleep": 5})
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(runtime, task.id, TaskStatus.DEAD_LETTER), timeout=15)
        dead = await runtime.store.get(task.id)
    assert dead is not None and dead.retry_count == 1  # two attempts: 0 and 1
    assert dead.error_info is not None
    assert dead.error_info.type == "TimeoutError" and dead.error_info.reason == "attempts-exhausted"


async def _is(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    return await _status(runtime, task_id) is status


async def _lost_with_its_worker(runtime: Runtime, task: BackgroundTask) -> BackgroundTask:
    """Store ``task`` as published, then as claimed (at its ``retry_count``) by a worker that
    vanished with its message: nothing will ever redeliver it, only the reaper can act."""
    # Published already, so the relay cannot republish it before the claim, however slow the machine.
    task = task.model_copy(update={"outbox": OutboxState(status=OutboxStatus.PUBLISHED)})
    await runtime.store.create(task)
    lapsed = utcnow() - timedelta(seconds=1)
    assert await runtime.store.try_set_running(
        task.id, attempt=task.retry_count, node_id="ghost", lease_until=lapsed
    )
    return task


async def test_reaper_recovers_a_running_task_whose_worker_vanished(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(relay=True, reaper_interval_seconds=0.2, reaper_grace_seconds=0.1)
    task = BackgroundTask(task_type="test_noop", parameters={"value": 4})
    async with running(runtime):
        task = await _lost_with_its_worker(runtime, task)
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=15)
        done = await runtime.store.get(task.id)
    assert done is not None and done.retry_count == 1 and done.execution_node_id == runtime.settings.node_id
    assert done.error_info is not None and done.error_info.type == "WorkerLost"
    assert Noop.calls[task.id] == 1


async def test_a_task_whose_worker_vanished_on_its_last_attempt_is_a_dead_letter_operators_can_replay(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(
        relay=True, reaper_interval_seconds=0.2, reaper_grace_seconds=0.1, retry_max_attempts=3
    )
    task = BackgroundTask(task_type="test_noop", parameters={"value": 7}, retry_count=2)  # its last attempt
    async with running(runtime):
        task = await _lost_with_its_worker(runtime, task)
        await eventually(lambda: _is(runtime, task.id, TaskStatus.DEAD_LETTER), timeout=15)
        record = await runtime.store.get_dead_letter(task.id)
        assert record is not None, "no dead-letter record: the DeadLetter API could not show or replay it"
        assert (record.task_id, record.task_type) == (task.id, "test_noop")
        assert record.reason == "attempts-exhausted" and record.attempt == 2
        assert record.error_info is not None and record.error_info.type == "WorkerLost"
        assert [(d.source, d.reason) for d in record.x_death] == [("platform", "attempts-exhausted")]
        assert TaskMessage.model_validate_json(record.body).task_id == task.id
        replayed = await runtime.dead_letters.replay(record.id, actor="ops")
        assert replayed.record.status.value == "replayed"
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=15)
        done = await runtime.store.get(task.id)
    assert done is not None and done.result == {"value": 7} and done.replays == 1
    assert Noop.calls[task.id] == 1


async def test_shutdown_out_of_grace_gives_running_tasks_back_and_another_worker_finishes_them(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    first = make_runtime(node_id="leaving", shutdown_grace_seconds=0.5)
    tasks = [BackgroundTask(task_type="test_noop", parameters={"value": i, "sleep": 3}) for i in range(5)]
    await first.start(wait_for_broker=True)
    try:
        await first.store.create_many(tasks)
        assert await first.publisher.publish_many([TaskMessage.for_task(t) for t in tasks]) == [None] * 5
        await eventually(lambda: _count(first, TaskStatus.RUNNING, 5))
    finally:
        started = time.monotonic()
        await first.stop(grace=first.settings.shutdown_grace_seconds)
        stop_took = time.monotonic() - started
    assert stop_took < 3, f"stop took {stop_took:.1f}s"

    # Nothing was left RUNNING by the worker that left (checked before another can claim).
    probe = create_store(first.settings.store_url)
    await probe.open()
    left = [await probe.get(t.id) for t in tasks]
    await probe.close()
    assert all(t is not None and t.status is TaskStatus.QUEUED for t in left), [t and t.status for t in left]
    second = make_runtime(node_id="staying")
    async with running(second):
        await eventually(lambda: _count(second, TaskStatus.COMPLETED, 5), timeout=20)
        finished = [await second.store.get(t.id) for t in tasks]
    assert all(t is not None and t.execution_node_id == "staying" for t in finished)
    assert all(Noop.calls[t.id] == 2 for t in tasks)  # at-least-once: begun, given back, done


async def _count(runtime: Runtime, status: TaskStatus, n: int) -> bool:
    return (await runtime.store.count_by_status()).get(status, 0) == n


async def test_cancel_while_queued_cancels_at_once_and_the_message_is_skipped(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime()
    task = BackgroundTask(task_type="test_noop", parameters={"value": 1})
    async with running(runtime):
        await runtime.store.create(task)
        cancelled = await runtime.commands.cancel(task.id, SYSTEM)
        assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
        await runtime.publisher.publish(TaskMessage.for_task(task))
        assert runtime.consumer is not None
        await eventually(lambda: _processed(runtime, 1))
        final = await runtime.store.get(task.id)
    assert final is not None and final.status is TaskStatus.CANCELLED
    assert Noop.calls[task.id] == 0


@pytest.mark.parametrize("task_type", ["test_cooperative", "test_stubborn"])
async def test_cancel_while_running_stops_the_executable_and_ends_cancelled(
    task_type: str, make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(cancel_poll_seconds=0.1, cancel_grace_seconds=0.5)
    task = BackgroundTask(task_type=task_type)
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(runtime, task.id, TaskStatus.RUNNING))
        flagged = await runtime.commands.cancel(task.id, SYSTEM)
        assert flagged is not None and flagged.cancel_requested
        started = time.monotonic()
        await eventually(lambda: _is(runtime, task.id, TaskStatus.CANCELLED), timeout=10)
        took = time.monotonic() - started
    assert took < 5
    if task_type == "test_cooperative":
        assert task.id in Cooperative.observed  # it saw ctx.cancelled and stopped by itself


async def _processed(runtime: Runtime, n: int) -> bool:
    return runtime.consumer is not None and runtime.consumer.processed >= n


async def test_store_unreachable_for_a_while_no_task_is_lost_and_all_complete(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, request: pytest.FixtureRequest
) -> None:
    store_url: str = request.getfixturevalue("postgres_database_url")
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.open()
    via_proxy = store_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    api = make_runtime(role="api", consume=False, store_url=store_url)
    # No DLQ consumer: the DLQ must stay empty by itself, not be drained.
    worker = make_runtime(
        node_id="patient", store_url=via_proxy, reaper_enabled=False, dlq_consumer_enabled=False
    )
    tasks = [BackgroundTask(task_type="test_noop", parameters={"value": i}) for i in range(30)]
    try:
        async with running(api), running(worker):
            await proxy.close()  # the worker's store goes away, connections and all
            await api.store.create_many(tasks)
            assert await api.publisher.publish_many([TaskMessage.for_task(t) for t in tasks]) == [None] * 30
            await asyncio.sleep(8)  # longer than five quick requeues would survive the delivery limit
            assert await _all(api, tasks, TaskStatus.QUEUED)
            await proxy.open()  # the store is back
            await eventually(lambda: _all(api, tasks, TaskStatus.COMPLETED), timeout=60)
            assert await _dlq_depth(rabbitmq, api) == 0
    finally:
        await proxy.close()


async def _all(runtime: Runtime, tasks: list[BackgroundTask], status: TaskStatus) -> bool:
    statuses = [await _status(runtime, t.id) for t in tasks]
    return all(s is status for s in statuses)


async def _dlq_depth(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.dead_letter_queue, passive=True)
    await channel.close()
    return int(queue.declaration_result.message_count)


async def test_a_claim_whose_reply_was_lost_is_recognised_and_the_task_runs_once(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime()
    store = runtime.store
    real_claim = store.try_set_running_many
    failed_once: list[bool] = []

    async def claim_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        won = await real_claim(*args, **kwargs)
        if not failed_once:
            failed_once.append(True)
            raise StoreError("connection reset after commit")
        return won

    store.try_set_running_many = claim_then_lose_the_reply  # type: ignore[method-assign]
    task = BackgroundTask(task_type="test_noop", parameters={"value": 8})
    async with running(runtime):
        await store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(runtime, task.id, TaskStatus.COMPLETED), timeout=10)
        done = await store.get(task.id)
    assert failed_once and done is not None and done.retry_count == 0
    assert Noop.calls[task.id] == 1


async def test_an_attempt_that_lost_its_lease_is_stopped(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(lease_seconds=0.6, cancel_poll_seconds=0.1, cancel_grace_seconds=0.3)
    task = BackgroundTask(task_type="test_stubborn")  # sleeps 30 s, ignores requests
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _is(runtime, task.id, TaskStatus.RUNNING))
        # Another attempt owns it now (a takeover): this worker's renewal will fail.
        await runtime.store._guarded_update(
            task.id, Guard(statuses=frozenset({TaskStatus.RUNNING})), {"execution_node_id": "thief"}
        )
        assert runtime.consumer is not None
        started = time.monotonic()
        await eventually(lambda: _idle(runtime), timeout=5)
        assert time.monotonic() - started < 3
        current = await runtime.store.get(task.id)
    assert current is not None and current.execution_node_id == "thief"  # its state is left to its owner


async def _idle(runtime: Runtime) -> bool:
    return runtime.consumer is not None and runtime.consumer.in_flight == 0
