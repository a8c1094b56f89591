"""The task consumer over a fake broker: a delivery goes from its queue through the claim, the
attempt and the settlement; duplicates, shutdown and faults end the way the worker promises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.models.message import HEADER_AWAIT_OWNER, HEADER_DEAD_REASON, HEADER_NOT_BEFORE
from taskplatform.models.target import TaskTarget
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing.broker import FakeBroker, FakeDelivery, FakePublisher
from taskplatform.worker import node_queue
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.consumer import TaskConsumer
from taskplatform.worker.selectors import SELECTOR_STREAM_PREFETCH
from taskplatform.worker.settlement import Settler
from tests.unit.worker.conftest import NODE, Echo
from topology import Topology, build_topology
from topology.spec import selector_id

NewTask = Callable[..., Awaitable[BackgroundTask]]
Consumers = Callable[..., Awaitable[TaskConsumer]]


@pytest.fixture
def topology(registry: ExecutableRegistry) -> Topology:
    return build_topology(registry.queues(), prefix="unit.", priority_levels=2, max_priority=1)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
async def consumers(
    broker: FakeBroker,
    topology: Topology,
    registry: ExecutableRegistry,
    store: Any,
    settler: Settler,
    config: WorkerConfig,
) -> AsyncIterator[Consumers]:
    """Start a consumer (``config`` changed by keyword arguments); stopped afterwards."""
    started: list[TaskConsumer] = []

    async def start(**changes: Any) -> TaskConsumer:
        worker_config = replace(config, **changes)
        consumer = TaskConsumer(broker, topology, registry, store, settler, worker_config)  # type: ignore[arg-type]
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop(grace=2)


async def _deliver(broker: FakeBroker, topology: Topology, delivery: FakeDelivery, task_type: str) -> None:
    [group] = [wq for wq in topology.work_queues if task_type in wq.task_types]
    await broker.queue(group.queues[0]).deliver(delivery)


async def _settled(*deliveries: FakeDelivery, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(d.settlement is None for d in deliveries):
        assert asyncio.get_running_loop().time() < deadline, "a delivery was never settled"
        await asyncio.sleep(0.01)


async def test_a_delivered_task_runs_and_its_delivery_is_acked_once_completed(
    consumers: Consumers, broker: FakeBroker, topology: Topology, store: Any, new_task: NewTask
) -> None:
    consumer = await consumers()
    task = await new_task(value=3)
    delivery = FakeDelivery.of(task)
    await _deliver(broker, topology, delivery, "unit_echo")
    await _settled(delivery)
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.COMPLETED and stored.result == {"value": 3}
    assert delivery.settlement == "ack" and Echo.runs == [task.id]
    assert broker.queue(topology.work_queues[0].queue).channel.prefetch_count == 2
    assert consumer.processed == 1


async def test_a_retryable_failure_is_published_for_later_and_its_delivery_acked(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    await consumers()
    task = await new_task("unit_wobbly")
    delivery = FakeDelivery.of(task)
    await _deliver(broker, topology, delivery, "unit_wobbly")
    await _settled(delivery)
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.RETRYING and stored.retry_count == 1
    [retry] = publisher.published
    assert retry.kind == "not-before" and retry.not_before is not None
    assert retry.not_before - utcnow() > timedelta(seconds=4)  # the executable's policy: 5 s
    assert delivery.settlement == "ack"


async def test_a_permanent_failure_dead_letters_the_task_and_its_delivery(
    consumers: Consumers, broker: FakeBroker, topology: Topology, store: Any, new_task: NewTask
) -> None:
    await consumers()
    task = await new_task("unit_broken")
    delivery = FakeDelivery.of(task)
    await _deliver(broker, topology, delivery, "unit_broken")
    await _settled(delivery)
    assert (await store.get(task.id)).status is TaskStatus.DEAD_LETTER
    assert delivery.settlement == "dead-letter"


async def test_a_duplicate_delivery_while_the_attempt_runs_here_waits_for_it_and_is_then_acked(
    consumers: Consumers, broker: FakeBroker, topology: Topology, store: Any, new_task: NewTask
) -> None:
    await consumers()
    task = await new_task(sleep=0.2)
    first, again = FakeDelivery.of(task), FakeDelivery.of(task, redelivered=True)
    await _deliver(broker, topology, first, "unit_echo")
    await asyncio.sleep(0.05)  # the first has claimed the task and runs it
    await _deliver(broker, topology, again, "unit_echo")
    await asyncio.sleep(0.05)
    assert again.settlement is None  # held until the attempt here ends, not settled blind
    await _settled(first, again)
    assert first.settlement == again.settlement == "ack"
    assert Echo.runs == [task.id]  # it ran once
    assert (await store.get(task.id)).status is TaskStatus.COMPLETED


async def test_stopping_gives_a_running_attempt_back_unfinished(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    consumer = await consumers()
    task = await new_task(sleep=30)
    delivery = FakeDelivery.of(task)
    await _deliver(broker, topology, delivery, "unit_echo")
    await asyncio.sleep(0.05)
    await consumer.stop(grace=0.1)
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.QUEUED and stored.retry_count == 0  # no attempt spent
    [copy] = publisher.published
    assert copy.message is not None and copy.message.task_id == task.id
    assert delivery.settlement == "ack" and broker.queue(topology.work_queues[0].queue).channel.is_closed


async def test_a_delivery_still_waiting_for_a_slot_at_shutdown_is_handed_back_unstarted(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    consumer = await consumers(prefetch=1)
    busy, waiting = await new_task(sleep=0.3), await new_task()
    first, second = FakeDelivery.of(busy), FakeDelivery.of(waiting)
    await _deliver(broker, topology, first, "unit_echo")
    await _deliver(broker, topology, second, "unit_echo")
    await asyncio.sleep(0.05)
    await consumer.stop(grace=2)
    assert first.settlement == "ack" and (await store.get(busy.id)).status is TaskStatus.COMPLETED
    [copy] = publisher.published
    assert copy.message is not None and copy.message.task_id == waiting.id
    assert HEADER_AWAIT_OWNER not in copy.headers and second.settlement == "ack"
    assert (await store.get(waiting.id)).status is TaskStatus.QUEUED and Echo.runs == [busy.id]


async def test_a_delivery_that_cannot_be_read_is_dead_lettered_with_its_reason(
    consumers: Consumers, broker: FakeBroker, topology: Topology, publisher: FakePublisher
) -> None:
    await consumers()
    delivery = FakeDelivery(b"not json", message_id="m-1")
    await _deliver(broker, topology, delivery, "unit_echo")
    await _settled(delivery)
    [copy] = publisher.published
    assert copy.exchange == "dlx" and copy.headers[HEADER_DEAD_REASON] == "missing-header"
    assert delivery.settlement == "ack"


async def test_a_task_of_a_type_no_executable_here_runs_is_dead_lettered(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    await consumers()
    task = await new_task("unit_unknown")
    delivery = FakeDelivery.of(task)
    await _deliver(broker, topology, delivery, "unit_echo")
    await _settled(delivery)
    assert (await store.get(task.id)).status is TaskStatus.DEAD_LETTER
    [copy] = publisher.published
    assert copy.headers[HEADER_DEAD_REASON] == "unknown-task-type" and delivery.settlement == "ack"


async def test_a_message_back_before_its_time_goes_round_the_delay_path_again(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    await consumers()
    task = await new_task()
    later = utcnow() + timedelta(seconds=60)
    delivery = FakeDelivery.of(task, headers={HEADER_NOT_BEFORE: int(later.timestamp() * 1000)})
    await _deliver(broker, topology, delivery, "unit_echo")
    await _settled(delivery)
    [copy] = publisher.published
    assert copy.kind == "not-before" and copy.not_before is not None
    assert abs((copy.not_before - later).total_seconds()) < 0.01
    assert delivery.settlement == "ack" and Echo.runs == []
    assert (await store.get(task.id)).status is TaskStatus.QUEUED


async def test_an_outcome_not_stored_within_the_outage_hold_is_handed_back_and_counted(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    consumer = await consumers()
    task = await new_task(sleep=0.1)
    delivery = FakeDelivery.of(task)
    await _deliver(broker, topology, delivery, "unit_echo")
    await asyncio.sleep(0.05)  # claimed and running
    store.down = True
    await _settled(delivery)
    store.down = False
    assert consumer.unrecorded == 1
    [copy] = publisher.published
    assert copy.headers[HEADER_AWAIT_OWNER] == "worker-1" and delivery.settlement == "ack"
    assert (await store.get(task.id)).status is TaskStatus.RUNNING  # it runs again once the lease lapses


async def test_a_worker_consumes_its_node_queue_and_the_queues_of_selectors_it_matches(
    consumers: Consumers, broker: FakeBroker, topology: Topology, store: Any, new_task: NewTask
) -> None:
    consumer = await consumers(labels={"role": "db", "zone": "a"})
    node_queue = broker.queue(f"unit.tasks.node.{NODE}")
    assert node_queue.consumed and node_queue.arguments["x-queue-type"] == "quorum"
    assert node_queue.bindings == [(topology.work_exchange, f"@node:{NODE}")]
    stream = broker.queue(topology.selectors_stream)
    assert stream.consumed and stream.channel.prefetch_count == SELECTOR_STREAM_PREFETCH

    def announcement(task_type: str, labels: dict[str, str], selector: str | None = None) -> FakeDelivery:
        body = json.dumps(
            {"selector": selector or selector_id(task_type, labels), "task_type": task_type, "labels": labels}
        )
        return FakeDelivery(body.encode())

    matching = selector_id("unit_echo", {"role": "db"})
    announced = [
        announcement("unit_echo", {"role": "db"}),  # matches: consumed
        announcement("unit_echo", {"role": "db"}),  # again (a daily repeat): nothing new
        announcement("unit_echo", {"role": "web"}),  # other labels
        announcement("unit_echo", {"role": "db", "rack": "1"}),  # a label this worker lacks
        announcement("not_here", {"role": "db"}),  # a type this worker does not serve
        announcement("unit_echo", {"role": "db"}, selector="0" * 24),  # a forged id
        FakeDelivery(b"{not json"),
    ]
    # the first declare fails (a broker fault): not followed yet, tried again at the repeat
    opened = broker.channel

    async def refused() -> Any:
        broker.channel = opened  # type: ignore[method-assign]
        raise ConnectionError("broker gone")

    broker.channel = refused  # type: ignore[method-assign]
    for delivery in announced:
        await stream.deliver(delivery)
    assert all(d.settlement == "ack" for d in announced)  # each gives its credit back
    name = f"unit.tasks.select.{matching}"
    assert {q for c in broker.channels for q in c.queues if ".tasks.select." in q} == {name}
    declared = next(c.queues[name] for c in broker.channels if name in c.queues and c.queues[name].arguments)
    assert declared.arguments["x-queue-type"] == "quorum" and declared.channel.is_closed
    queue = broker.queue(topology.work_queues[0].queue).channel.queues[name]  # on the work channel
    assert queue.consumed and queue.bindings == [(topology.work_exchange, f"@select:{matching}")]
    # a task from the selector's queue runs like any other
    task = await new_task(value=5)
    delivery = FakeDelivery.of(task)
    await queue.deliver(delivery)
    await _settled(delivery)
    assert delivery.settlement == "ack" and (await store.get(task.id)).status is TaskStatus.COMPLETED
    await consumer.stop(grace=1)
    assert not queue.consumed and not stream.consumed and not node_queue.consumed


@pytest.mark.parametrize(
    "limits",
    [{"type_concurrency": {"unit_echo": 1}}, {"max_concurrency": 1}, {}],
    ids=["type-cap", "worker-cap", "no-cap"],
)
async def test_a_worker_keeps_its_own_caps_and_hands_back_what_waits_past_the_hold(
    limits: dict[str, Any],
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    consumer = await consumers(prefetch=4, priority_hold=0.3, **limits)
    assert consumer.capacity == (1 if "max_concurrency" in limits else 4 * len(topology.work_queues))
    busy, waiting = await new_task(sleep=1.0), await new_task(value=2)
    first, second = FakeDelivery.of(busy), FakeDelivery.of(waiting)
    await _deliver(broker, topology, first, "unit_echo")
    await asyncio.sleep(0.05)
    await _deliver(broker, topology, second, "unit_echo")
    await _settled(first, second)
    assert (await store.get(busy.id)).status is TaskStatus.COMPLETED
    if not limits:  # the group's four slots: both ran at once
        assert (await store.get(waiting.id)).status is TaskStatus.COMPLETED and publisher.published == []
        return
    # the cap held one slot: the second waited the hold, then went back to its queue unstarted
    [copy] = publisher.published
    assert copy.message is not None and copy.message.task_id == waiting.id and second.settlement == "ack"
    assert (await store.get(waiting.id)).status is TaskStatus.QUEUED and Echo.runs == [busy.id]


async def test_a_delivery_waiting_for_a_capped_type_at_shutdown_is_handed_back(
    consumers: Consumers,
    broker: FakeBroker,
    topology: Topology,
    store: Any,
    new_task: NewTask,
    publisher: FakePublisher,
) -> None:
    consumer = await consumers(prefetch=4, type_concurrency={"unit_echo": 1})
    busy, waiting = await new_task(sleep=0.3), await new_task()
    first, second = FakeDelivery.of(busy), FakeDelivery.of(waiting)
    await _deliver(broker, topology, first, "unit_echo")
    await asyncio.sleep(0.05)
    await _deliver(broker, topology, second, "unit_echo")
    await asyncio.sleep(0.05)
    await consumer.stop(grace=2)
    [copy] = publisher.published
    assert copy.message is not None and copy.message.task_id == waiting.id and second.settlement == "ack"
    assert (await store.get(waiting.id)).status is TaskStatus.QUEUED


async def test_a_selector_announced_as_consumed_by_nobody_is_consumed_afresh(
    consumers: Consumers, broker: FakeBroker, topology: Topology
) -> None:
    consumer = await consumers(labels={"role": "db"})
    stream = broker.queue(topology.selectors_stream)
    selector = selector_id("unit_echo", {"role": "db"})
    name = f"unit.tasks.select.{selector}"

    def announcement(consumers: int | None) -> FakeDelivery:
        fields = {
            "selector": selector,
            "task_type": "unit_echo",
            "labels": {"role": "db"},
            "consumers": consumers,
        }
        return FakeDelivery(json.dumps(fields).encode())

    await stream.deliver(announcement(None))
    queue = broker.queue(topology.work_queues[0].queue).channel.queues[name]
    [first_tag] = queue._callbacks  # noqa: SLF001 - the fake's consumer tags
    await stream.deliver(announcement(3))  # others consume it: nothing to do
    assert list(queue._callbacks) == [first_tag]  # noqa: SLF001
    queue._callbacks.clear()  # noqa: SLF001 - the queue was deleted: the broker dropped the consumer silently
    assert not queue.consumed
    await stream.deliver(announcement(0))  # made again, consumed by nobody
    assert queue.consumed and len(queue.bindings) == 2  # bound and consumed once more
    await consumer.stop(grace=1)
    assert not queue.consumed and not stream.consumed


async def test_a_worker_whose_node_queue_was_gone_publishes_what_still_waits_for_it_again(
    consumers: Consumers,
    broker: FakeBroker,
    store: Any,
    publisher: FakePublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine, theirs = TaskTarget(node=NODE), TaskTarget(node="elsewhere")
    waiting = BackgroundTask(task_type="unit_echo", parameters={}, target=mine)
    later = utcnow() + timedelta(seconds=30)
    retrying = BackgroundTask(
        task_type="unit_echo", parameters={}, target=mine, status=TaskStatus.RETRYING, next_attempt_at=later
    )
    running = BackgroundTask(task_type="unit_echo", parameters={}, target=mine)
    other_node = BackgroundTask(task_type="unit_echo", parameters={}, target=theirs)
    untargeted = BackgroundTask(task_type="unit_echo", parameters={})
    await store.create_many([waiting, retrying, running, other_node, untargeted])
    lease = store.now() + timedelta(seconds=60)
    assert await store.try_set_running(running.id, attempt=0, node_id=NODE, lease_until=lease)
    name = f"unit.tasks.node.{NODE}"
    broker.absent.add(name)  # it expired while the node was away, with the messages in it
    monkeypatch.setattr(node_queue, "RETRY_SECONDS", 0.01)
    publisher.fail(times=1)  # the broker refuses the first publish: the republish starts over
    store.refused.add("list")  # and the store is away at first
    consumer = await consumers()
    assert broker.queue(name).consumed and name not in broker.absent  # made again, consumed at once
    assert consumer.restoring is not None
    await asyncio.sleep(0.05)
    store.refused.discard("list")
    assert await asyncio.wait_for(consumer.restoring, 5) == 2
    assert sorted((p.kind, p.task_id) for p in publisher.published) == sorted(
        [("task", waiting.id), ("not-before", retrying.id)]
    )
    [delayed] = [p for p in publisher.published if p.kind == "not-before"]
    assert delayed.not_before == later  # a retry keeps its delay
    publisher.published.clear()
    again = await consumers()  # the queue is there: nothing is published again
    assert again.restoring is None and publisher.published == []


async def test_a_worker_stopping_while_it_republishes_stops_the_republish(
    consumers: Consumers, broker: FakeBroker, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_queue, "RETRY_SECONDS", 0.01)
    broker.absent.add(f"unit.tasks.node.{NODE}")
    store.refused.add("list")  # the store stays away: the republish keeps trying
    consumer = await consumers()
    restoring = consumer.restoring
    assert restoring is not None
    await asyncio.sleep(0.05)
    assert not restoring.done()
    await consumer.stop(grace=1)
    assert restoring.cancelled()
