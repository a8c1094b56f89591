"""A worker dies holding a full prefetch while hundreds of tasks wait: the broker hands its
messages to the survivor, whose tasks still run under the dead worker's live lease.

Waiting for that lease must not hold the survivor's execution slots: the redelivered messages
go round the delay path until the lease lapses, and the survivor keeps working the backlog.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus, utcnow
from taskplatform.models.message import AwaitOwner
from taskplatform.runtime import Runtime
from tests.support.executables import Noop
from tests.support.runtime import eventually, running
from tests.support.worker_process import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 6.0
PREFETCH = 8
TASK_SECONDS = 0.5


async def _consumers(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.work_queues[0].queues[0], passive=True)
    await channel.close()
    return int(queue.declaration_result.consumer_count)


async def _tasks(runtime: Runtime, ids: list[str]) -> list[BackgroundTask]:
    found = [await runtime.store.get(i) for i in ids]
    return [t for t in found if t is not None]


def _completed_by(tasks: list[BackgroundTask], node: str, start: datetime, end: datetime) -> int:
    return sum(
        1
        for t in tasks
        if t.execution_node_id == node and t.completed_at is not None and start <= t.completed_at < end
    )


async def test_survivor_keeps_its_rate_while_a_killed_workers_leases_run_out(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("own_postgres_database_url")
    # With its outbox relay, as deployed: a task the reaper settles is published again by it.
    survivor = make_runtime(
        node_id="survivor", store_url=store_url, lease_seconds=LEASE, prefetch=PREFETCH, relay=True
    )
    tasks = [
        BackgroundTask(task_type="test_noop", parameters={"value": i, "sleep": TASK_SECONDS})
        for i in range(500)
    ]
    ids = [t.id for t in tasks]
    async with running(survivor):
        victim = start_worker(
            survivor.settings, node_id="victim", lease_seconds=str(LEASE), prefetch=str(PREFETCH)
        )
        try:
            await eventually(lambda: _at_least(_consumers(rabbitmq, survivor), 2), timeout=20)
            await survivor.store.create_many(tasks)
            assert (
                await survivor.publisher.publish_many([TaskMessage.for_task(t) for t in tasks])
                == [None] * 500
            )
            await eventually(lambda: _victim_full(survivor, ids), timeout=20)
            await asyncio.sleep(3.0)  # both at their normal pace for a while
            await eventually(lambda: _victim_full(survivor, ids), timeout=10)
            killed_at = utcnow()
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                victim.kill()
        await asyncio.sleep(LEASE + 1)
        after_window = await _tasks(survivor, ids)
        waiting = sum(1 for t in after_window if t.status is TaskStatus.QUEUED)
        await eventually(lambda: _all_completed(survivor, ids), timeout=120)
        done = await _tasks(survivor, ids)
    before = _completed_by(done, "survivor", killed_at - timedelta(seconds=3), killed_at) / 3.0
    during = _completed_by(done, "survivor", killed_at, killed_at + timedelta(seconds=LEASE)) / LEASE
    print(
        f"\nsurvivor: {before:.1f} tasks/s before the kill, {during:.1f} tasks/s during the dead worker's "
        f"{LEASE:.0f}s lease (ratio {during / before:.2f}); {waiting} still queued after the window"
    )
    assert waiting > 0  # hundreds waited: the survivor had work all through the window
    assert all(t.status is TaskStatus.COMPLETED for t in done) and len(done) == 500
    # The dead worker's tasks were taken over at their attempt when its leases lapsed (their
    # messages came back ahead of the backlog), not reaped as failed attempts.
    assert [t.id for t in done if t.retry_count != 0] == []
    # Before, the redelivered messages each held a slot for up to two leases: ~0 tasks/s.
    assert during >= 0.5 * before, f"survivor stalled: {during:.1f}/s during the lease vs {before:.1f}/s"


async def _at_least(count: Any, n: int) -> bool:
    return int(await count) >= n


async def _victim_full(runtime: Runtime, ids: list[str]) -> bool:
    page = await runtime.store.list(limit=500)
    running_on_victim = [
        t for t in page.items if t.status is TaskStatus.RUNNING and t.execution_node_id == "victim"
    ]
    return len(running_on_victim) >= PREFETCH


async def _all_completed(runtime: Runtime, ids: list[str]) -> bool:
    return all(t.status is TaskStatus.COMPLETED for t in await _tasks(runtime, ids))


async def test_a_message_waiting_for_an_owner_that_keeps_renewing_is_let_go_after_the_bound(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(node_id="waiter", lease_seconds=2.0)
    task = BackgroundTask(task_type="test_noop", parameters={"value": 1})
    async with running(runtime):
        await runtime.store.create(task)
        # Another worker runs it, and renews its lease far ahead.
        owner_lease = runtime.store.now() + timedelta(seconds=60)
        assert await runtime.store.try_set_running(
            task.id, attempt=0, node_id="alive", lease_until=owner_lease
        )
        # A copy of its message that has waited for that owner longer than any attempt may run.
        long_ago = AwaitOwner("alive", runtime.store.now() - timedelta(hours=1))
        await runtime.publisher.publish(TaskMessage.for_task(task), extra_headers=long_ago.headers())
        assert runtime.consumer is not None
        await eventually(lambda: _processed(runtime, 1), timeout=10)
        await asyncio.sleep(0.5)
        current = await runtime.store.get(task.id)
        depth = await _depth(rabbitmq, runtime)
    # Let go (acked): not sent round again, not run, the owner's task untouched.
    assert depth == 0 and Noop.calls[task.id] == 0
    assert (
        current is not None and current.status is TaskStatus.RUNNING and current.execution_node_id == "alive"
    )


async def test_a_redelivered_message_of_a_live_owner_waits_outside_the_worker_and_takes_over(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    # prefetch 1: while the redelivery waits for the lease, this worker's only slot stays free.
    runtime = make_runtime(node_id="patient", lease_seconds=2.0, prefetch=1)
    held = BackgroundTask(task_type="test_noop", parameters={"value": 1})
    other = BackgroundTask(task_type="test_noop", parameters={"value": 2})
    async with running(runtime):
        await runtime.store.create_many([held, other])
        lease = runtime.store.now() + timedelta(seconds=3)  # its owner died just now
        assert await runtime.store.try_set_running(held.id, attempt=0, node_id="dead", lease_until=lease)
        waiting = AwaitOwner.start("dead", runtime.store.now())
        await runtime.publisher.publish(TaskMessage.for_task(held), extra_headers=waiting.headers())
        await runtime.publisher.publish(TaskMessage.for_task(other))
        started = time.monotonic()
        await eventually(lambda: _is(runtime, other.id, TaskStatus.COMPLETED), timeout=10)
        other_done = time.monotonic() - started
        await eventually(lambda: _is(runtime, held.id, TaskStatus.COMPLETED), timeout=15)
        done = await runtime.store.get(held.id)
    assert other_done < 2.5  # it did not wait behind the held message's lease
    assert done is not None and done.execution_node_id == "patient" and done.retry_count == 0
    assert Noop.calls[held.id] == 1


async def _processed(runtime: Runtime, n: int) -> bool:
    return runtime.consumer is not None and runtime.consumer.processed >= n


async def _depth(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    total = 0
    for name in [*runtime.topology.work_queues[0].queues, *(t.queue for t in runtime.topology.delay_tiers)]:
        queue = await channel.declare_queue(name, passive=True)
        total += int(queue.declaration_result.message_count)
    await channel.close()
    return total


async def _is(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    task = await runtime.store.get(task_id)
    return task is not None and task.status is status
