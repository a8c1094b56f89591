"""The store comes and goes under running work (PostgreSQL behind a TCP proxy the test cuts).

Nothing healthy may be dead-lettered or run twice because of it: settlement retries its
writes through an outage, and an outage longer than ``STORE_OUTAGE_HOLD_SECONDS`` hands the
delivery back without counting toward the queue's delivery limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from taskplatform.errors import StoreError
from taskplatform.events.models import TaskStarted
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.runtime import Runtime
from tests.support.executables import Noop, Unstorable
from tests.support.runtime import eventually, running
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _statuses(runtime: Runtime, ids: list[str]) -> dict[str, TaskStatus | None]:
    out: dict[str, TaskStatus | None] = {}
    for task_id in ids:
        task = await runtime.store.get(task_id)
        out[task_id] = task.status if task else None
    return out


async def _all(runtime: Runtime, ids: list[str], status: TaskStatus) -> bool:
    return all(s is status for s in (await _statuses(runtime, ids)).values())


async def _queue_depth(rabbitmq: Any, name: str) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(name, passive=True)
    await channel.close()
    return int(queue.declaration_result.message_count)


@pytest.fixture
async def store_proxy(request: pytest.FixtureRequest) -> Any:
    """(direct URL, URL through a proxy the test opens and closes, the proxy)."""
    store_url: str = request.getfixturevalue("own_postgres_database_url")
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.open()
    try:
        yield store_url, store_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
    finally:
        await proxy.close()


async def test_postgresql_cut_eight_times_while_60_tasks_run_none_dead_lettered_none_rerun(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, store_proxy: Any
) -> None:
    direct, via_proxy, proxy = store_proxy
    api = make_runtime(role="api", consume=False, store_url=direct, reaper_enabled=False)
    worker = make_runtime(
        node_id="flapping",
        store_url=via_proxy,
        prefetch=10,  # six waves of three seconds: attempts start and end all through the cuts
        store_outage_hold_seconds=30.0,
        reaper_enabled=False,
        dlq_consumer_enabled=False,  # the DLQ must stay empty by itself
    )
    tasks = [BackgroundTask(task_type="test_noop", parameters={"value": i, "sleep": 3.0}) for i in range(60)]
    ids = [t.id for t in tasks]
    async with running(api), running(worker):
        await api.store.create_many(tasks)
        assert await api.publisher.publish_many([TaskMessage.for_task(t) for t in tasks]) == [None] * 60
        await eventually(lambda: _any_running(api, ids), timeout=10)
        cut = 0.0
        for _ in range(8):  # 8 x 2.5 s without the store, 1 s with it between
            started = time.monotonic()
            await proxy.close()
            await asyncio.sleep(2.5)
            await proxy.open()
            cut += time.monotonic() - started
            await asyncio.sleep(1.0)
        await eventually(lambda: _all(api, ids, TaskStatus.COMPLETED), timeout=90)
        assert await _queue_depth(rabbitmq, api.topology.dead_letter_queue) == 0
        assert worker.consumer is not None
        unrecorded = worker.consumer.unrecorded
    reruns = sum(Noop.calls[i] - 1 for i in ids)
    print(
        f"\nstore cut {cut:.1f}s in 8 cuts: 60 COMPLETED, 0 DEAD_LETTER, reruns {reruns}, "
        f"outcomes not stored within the hold {unrecorded}"
    )
    assert all(Noop.calls[i] >= 1 for i in ids)
    # A rerun only for an attempt whose outcome could not be stored within the hold (30 s here,
    # longer than any single cut): none.
    assert reruns == unrecorded == 0


async def _any_running(runtime: Runtime, ids: list[str]) -> bool:
    return any(s is TaskStatus.RUNNING for s in (await _statuses(runtime, ids)).values())


async def test_store_outage_longer_than_the_hold_hands_the_delivery_back_without_counting_it(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, store_proxy: Any
) -> None:
    direct, via_proxy, proxy = store_proxy
    # Delivery limit 1: one requeue of this message and RabbitMQ dead-letters it.
    api = make_runtime(role="api", consume=False, store_url=direct, reaper_enabled=False, delivery_limit=1)
    worker = make_runtime(
        node_id="held-out",
        store_url=via_proxy,
        store_outage_hold_seconds=1.5,
        lease_seconds=2.0,
        reaper_enabled=False,
        dlq_consumer_enabled=False,
        delivery_limit=1,
    )
    task = BackgroundTask(task_type="test_noop", parameters={"value": 7, "sleep": 1.0})
    async with running(api), running(worker):
        await api.store.create(task)
        await api.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _all(api, [task.id], TaskStatus.RUNNING), timeout=10)
        await proxy.close()  # gone before the attempt ends, for 4 hold lengths
        assert worker.consumer is not None
        await eventually(lambda: _unrecorded(worker, 1), timeout=10)
        await asyncio.sleep(4.5)  # the given-back copy comes round and is held again, uncounted
        await proxy.open()
        await eventually(lambda: _all(api, [task.id], TaskStatus.COMPLETED), timeout=30)
        assert await _queue_depth(rabbitmq, api.topology.dead_letter_queue) == 0
        unrecorded = worker.consumer.unrecorded
        done = await api.store.get(task.id)
    assert done is not None and done.retry_count == 0 and done.result == {"value": 7}
    # Its first outcome was never stored, so it ran once more: exactly that, and only that.
    assert unrecorded == 1 and Noop.calls[task.id] == 2


async def _unrecorded(runtime: Runtime, n: int) -> bool:
    return runtime.consumer is not None and runtime.consumer.unrecorded >= n


async def test_an_attempt_whose_start_cannot_be_recorded_is_handed_back_and_runs_once(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(store_outage_hold_seconds=0.5, lease_seconds=1.0, delivery_limit=1)
    bus_publish = runtime.bus.publish
    refused: list[float] = []

    async def refuse_starts_for_a_second(event: Any, task: Any = None) -> Any:
        # Every try to record the start fails for a second: longer than the 0.5 s hold.
        if isinstance(event, TaskStarted) and (not refused or time.monotonic() - refused[0] < 1.0):
            refused.append(time.monotonic())
            raise StoreError("store unreachable (injected)")
        return await bus_publish(event, task)

    # The Settler holds the bus itself: replace its publish where the settler calls it.
    runtime.bus.publish = refuse_starts_for_a_second  # type: ignore[method-assign]
    task = BackgroundTask(task_type="test_noop", parameters={"value": 3})
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _all(runtime, [task.id], TaskStatus.COMPLETED), timeout=15)
        assert await _queue_depth(rabbitmq, runtime.topology.dead_letter_queue) == 0
    # It never started the first time: the copy handed back (the claim was this node's) ran it.
    assert len(refused) >= 2 and Noop.calls[task.id] == 1


async def test_a_rate_limit_slot_the_store_cannot_reserve_sends_the_message_round_uncounted(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    # Delivery limit 1: one requeue and RabbitMQ dead-letters the message.
    runtime = make_runtime(delivery_limit=1, dlq_consumer_enabled=False)
    assert runtime.consumer is not None
    rates = runtime.consumer._intake._rates  # the consumer's admission of rate-limited types
    admit = rates.admit
    refusals: list[str] = []

    async def store_down_three_times(tm: Any, limits: Any) -> Any:
        if len(refusals) < 3:
            refusals.append(tm.task_id)
            raise StoreError("store unreachable for the whole hold (injected)")
        return await admit(tm, limits)

    rates.admit = store_down_three_times  # type: ignore[method-assign]
    task = BackgroundTask(task_type="test_paced", parameters={"value": 1})
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _all(runtime, [task.id], TaskStatus.COMPLETED), timeout=20)
        assert await _queue_depth(rabbitmq, runtime.topology.dead_letter_queue) == 0
    assert refusals == [task.id] * 3  # three rounds, none counted as a delivery


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0, "the result cannot be stored: result.text: text must not contain NUL"),
        (1, "the result cannot be stored"),
    ],
)
async def test_a_result_no_store_can_keep_fails_its_task_once_instead_of_looping(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, own_postgres_database_url: str, value: int, why: str
) -> None:
    runtime = make_runtime(store_url=own_postgres_database_url, dlq_consumer_enabled=False)
    task = BackgroundTask(task_type="test_unstorable", parameters={"value": value})
    async with running(runtime):
        await runtime.store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _all(runtime, [task.id], TaskStatus.DEAD_LETTER), timeout=15)
        dead = await runtime.store.get(task.id)
    assert dead is not None and dead.error_info is not None
    assert why in dead.error_info.message
    assert Unstorable.calls[task.id] == 1


async def test_an_outcome_the_store_keeps_refusing_while_it_answers_fails_the_task_not_loops(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    # A hold far longer than the test: only telling a refusal from an outage ends it in time.
    runtime = make_runtime(store_outage_hold_seconds=300.0, dlq_consumer_enabled=False)
    store = runtime.store
    refused: list[int] = []

    async def refuse_completions(*args: Any, **kwargs: Any) -> Any:
        refused.append(1)
        raise StoreError("invalid input syntax (injected): the store answers, and refuses this")

    store.record_completions = refuse_completions  # type: ignore[method-assign]
    task = BackgroundTask(task_type="test_noop", parameters={"value": 2})
    async with running(runtime):
        await store.create(task)
        await runtime.publisher.publish(TaskMessage.for_task(task))
        await eventually(lambda: _all(runtime, [task.id], TaskStatus.DEAD_LETTER), timeout=20)
        dead = await store.get(task.id)
    assert dead is not None and dead.error_info is not None
    assert dead.error_info.message.startswith("the attempt's outcome could not be stored")
    assert Noop.calls[task.id] == 1 and 3 <= len(refused) <= 4  # the first try, then three refusals


async def test_after_meeting_a_store_outage_the_reaper_leaves_lapsed_leases_to_their_workers_a_while(
    make_runtime: Callable[..., Runtime],
) -> None:
    # No broker needed: the reaper alone, on its own store.
    runtime = make_runtime(role="api", consume=False, reaper_enabled=False, lease_seconds=1.0)
    store = runtime.store
    await store.open()
    try:
        task = BackgroundTask(task_type="test_noop")
        await store.create(task)
        # Its worker could not renew during the outage either: the lease lapsed meanwhile.
        lapsed = store.now() - timedelta(seconds=30)
        assert await store.try_set_running(task.id, attempt=0, node_id="alive", lease_until=lapsed)
        list_lapsed = store.list_lapsed
        calls: list[int] = []

        async def unreachable_once(**kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise StoreError("store unreachable (injected)")
            return await list_lapsed(**kwargs)

        store.list_lapsed = unreachable_once  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            await runtime.reaper.run_once()
        assert await runtime.reaper.run_once() == 0  # the store is back, but the workers come first
        current = await store.get(task.id)
        assert current is not None and current.status is TaskStatus.RUNNING
        await asyncio.sleep(1.1)  # one lease later, a lease still lapsed is a vanished worker's
        assert await runtime.reaper.run_once() == 1
        reaped = await store.get(task.id)
        assert reaped is not None and reaped.status is TaskStatus.RETRYING
    finally:
        await store.close()
