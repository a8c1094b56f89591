"""The external event bridge against real RabbitMQ: complete, ordered per task, valid, durable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from taskplatform.events import EVENT_CLASSES, EventBus, EventType, Published, TaskEvent, TaskView
from taskplatform.events.bridge import ExternalEventBridge
from taskplatform.events.schema import DEFAULT_PATH
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.metrics import Metrics
from taskplatform.models import BackgroundTask, ErrorInfo, SubTaskStatusSummary, TaskStatus, utcnow
from tests.support.services import RABBITMQ_URL, require_rabbitmq
from tests.support.tcp_proxy import TcpProxy
from topology import build_topology

pytestmark = pytest.mark.integration

S = TaskStatus
STATUS_AFTER = {
    **{EventType.SUBMITTED: S.QUEUED, EventType.REQUEUED: S.QUEUED, EventType.RETRYING: S.RETRYING},
    EventType.REPLAYED: S.QUEUED,
    **{EventType.COMPLETED: S.COMPLETED, EventType.FAILED: S.FAILED, EventType.CANCELLED: S.CANCELLED},
    EventType.DEAD_LETTERED: S.DEAD_LETTER,
}


# ------------------------------------------------------------------ events to send
CLASSES: dict[EventType, type[TaskEvent]] = {cls.type: cls for cls in EVENT_CLASSES}


def make_event(kind: EventType, task: BackgroundTask, n: int) -> TaskEvent:
    boom = ErrorInfo(type="ValueError", message=f"boom {n}", traceback="...", attempt=task.retry_count)
    extra: dict[EventType, dict[str, Any]] = {
        EventType.PROGRESS: {"progress": {"percent": n, "message": f"step {n}"}},
        EventType.WAITING: {"children": 2},
        EventType.RETRYING: {"error": boom, "delay_seconds": 1, "next_attempt_at": utcnow() + timedelta(1)},
        EventType.COMPLETED: {"result": {"value": n}},
        EventType.FAILED: {"error": boom},
        EventType.DEAD_LETTERED: {"reason": "max-retries-exceeded", "error": boom},
    }
    fields = {"task_id": task.id, "task_type": task.task_type, "node_id": "node-t", **extra.get(kind, {})}
    return CLASSES[kind](**fields)


def lifecycle(task_type: str, kinds: Sequence[EventType], **task_fields: Any) -> list[Published]:
    """One task's events in order, each with the task's state (and store version) after it: the
    document, as producers give it to ``EventBus.publish`` (observers get a ``TaskView`` of it)."""
    task = BackgroundTask(task_type=task_type, user_id="user-1", **task_fields)
    out: list[Published] = []
    for n, kind in enumerate(kinds):
        event = make_event(kind, task, n)
        task = task.model_copy(
            update={"status": STATUS_AFTER.get(kind, S.RUNNING), "version": task.version + 1}
        )
        out.append(Published(event, task))
    return out


def interleave(per_task: Iterable[list[Published]]) -> list[Published]:
    """Round robin over the tasks, as concurrent tasks produce events."""
    lists = list(per_task)
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def progress_run(task_type: str, n: int) -> list[Published]:
    """submitted, started, n - 3 progress events, completed."""
    middle = [EventType.PROGRESS] * (n - 3)
    return lifecycle(task_type, [EventType.SUBMITTED, EventType.STARTED, *middle, EventType.COMPLETED])


# ------------------------------------------------------------------ receiving side
def body(message: AbstractIncomingMessage) -> Any:
    return json.loads(message.body)


class Sink:
    """A queue bound to the events exchange, consumed into a list."""

    def __init__(self) -> None:
        self.received: list[AbstractIncomingMessage] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.received.append(message)

    def ids(self) -> set[str]:
        return {str(m.message_id) for m in self.received}

    async def wait_for(self, ids: Iterable[str], timeout: float) -> None:
        wanted = set(ids)
        await wait_until(lambda: wanted <= self.ids(), timeout, f"{len(wanted)} events")

    def first_occurrences_per_task(self) -> dict[str, list[str]]:
        seen: set[str] = set()
        per_task: dict[str, list[str]] = defaultdict(list)
        for m in self.received:
            if m.message_id not in seen:
                seen.add(str(m.message_id))
                per_task[body(m)["task"]["id"]].append(str(m.message_id))
        return dict(per_task)


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not received within {timeout}s")
        await asyncio.sleep(0.02)


def sent_per_task(sent: Iterable[Published]) -> dict[str, list[str]]:
    per_task: dict[str, list[str]] = defaultdict(list)
    for p in sent:
        per_task[p.event.task_id].append(p.event.event_id)
    return dict(per_task)


@dataclass
class Broker:
    connection: AbstractConnection
    exchange: str
    #: A queue bound with this key, consumed into a Sink.
    sink: Callable[[str], Awaitable[Sink]]
    #: A queue bound with this key that rejects every message: publishes routed to it are nacked.
    choke: Callable[[str], Awaitable[Callable[[], Awaitable[None]]]]


@pytest.fixture
async def broker(topology_prefix: str) -> AsyncIterator[Broker]:
    """This test's events exchange (declared with its prefix) and sinks; all deleted afterwards."""
    require_rabbitmq()
    exchange = build_topology({}, prefix=topology_prefix).events_exchange
    # Not robust: a robust channel would re-declare a consumed queue the cleanup deletes.
    connection = await aio_pika.connect(RABBITMQ_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    x = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queues: list[str] = []

    async def sink(binding_key: str) -> Sink:
        receiver = Sink()
        queue = await channel.declare_queue(f"{topology_prefix}events.sink.{len(queues)}", durable=False)
        queues.append(queue.name)
        await queue.bind(x, binding_key)
        await queue.consume(receiver.on_message, no_ack=True)
        return receiver

    async def choke(binding_key: str) -> Callable[[], Awaitable[None]]:
        arguments: dict[str, Any] = {"x-max-length": 0, "x-overflow": "reject-publish"}
        queue = await channel.declare_queue(f"{topology_prefix}events.choke", arguments=arguments)
        queues.append(queue.name)
        await queue.bind(x, binding_key)

        async def remove() -> None:
            await channel.queue_delete(queue.name)

        return remove

    try:
        yield Broker(connection, exchange, sink, choke)
    finally:
        cleanup = await connection.channel()
        for name in queues:
            await cleanup.queue_delete(name)
        await cleanup.exchange_delete(exchange)
        await connection.close()


@contextlib.asynccontextmanager
async def bridged(
    exchange: str, url: str = RABBITMQ_URL, *, before: Sequence[Any] = (), **bridge_options: Any
) -> AsyncIterator[tuple[EventBus, ExternalEventBridge]]:
    """A bus whose observers are ``before`` and then a bridge on its own broker connection."""
    connection = BrokerConnection(url, name="test-events-bridge", retry_interval=0.2)
    await connection.start()
    bridge = ExternalEventBridge(connection, exchange, **bridge_options)
    bus = EventBus(observer_batch=256)
    for observer in before:
        bus.add_observer(observer)
    bus.add_observer(bridge)
    bus.start()
    try:
        yield bus, bridge
    finally:
        await bus.close(timeout=10)
        await bridge.close()
        await connection.close()


def bridged_count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("taskplatform_events_bridged_total", {"outcome": outcome}) or 0.0


# ------------------------------------------------------------------ tests
async def test_every_event_arrives_in_order_per_task_valid_and_with_its_routing_key(broker: Broker) -> None:
    everything = await broker.sink("task.#")
    completed_only = await broker.sink("task.*.completed")
    parent = SubTaskStatusSummary(total=2, completed=1, running=1)
    per_task = [
        lifecycle("generate_summary", [EventType.SUBMITTED, EventType.STARTED, EventType.PROGRESS,
                                       EventType.RETRYING, EventType.STARTED, EventType.COMPLETED]),
        lifecycle("generate_summary", [EventType.SUBMITTED, EventType.STARTED, EventType.FAILED,
                                       EventType.DEAD_LETTERED]),
        lifecycle("generate_scene", [EventType.SUBMITTED, EventType.CANCELLED]),
        lifecycle("generate_scene", [EventType.SUBMITTED, EventType.STARTED, EventType.WAITING,
                                     EventType.COMPLETED], sub_task_status_summary=parent),
        lifecycle("generate_scene", [EventType.SUBMITTED, EventType.STARTED, EventType.REQUEUED,
                                     EventType.STARTED, EventType.PROGRESS, EventType.COMPLETED]),
    ]  # fmt: skip
    sent = interleave(per_task)
    validator = Draft202012Validator(json.loads(DEFAULT_PATH.read_text(encoding="utf-8")))

    registry = CollectorRegistry()
    async with bridged(broker.exchange, metrics=Metrics(registry)) as (bus, bridge):
        for p in sent:
            await bus.publish(p.event, p.task)
        await everything.wait_for((p.event.event_id for p in sent), timeout=10)
        assert bridge.published == len(sent) and bridge.retries == 0
        assert bridged_count(registry, "published") == len(sent)

    assert len(everything.received) == len(sent)  # nothing twice without a fault
    assert everything.first_occurrences_per_task() == sent_per_task(sent)
    by_id = {p.event.event_id: p for p in sent}
    for m in everything.received:
        p, document = by_id[str(m.message_id)], body(m)
        key = f"task.{p.event.task_type}.{p.event.type.value}"
        assert [e.message for e in validator.iter_errors(document)] == []
        assert (m.routing_key, document["routing_key"], m.type) == (key, key, key)
        assert document["event_id"] == m.message_id and document["sequence"] == p.task.version  # type: ignore[union-attr]
        assert m.content_type == "application/json" and m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.headers == {"x-schema-version": "1"} and m.timestamp is not None
    completed = [p.event.event_id for p in sent if p.event.type is EventType.COMPLETED]
    await completed_only.wait_for(completed, timeout=5)
    assert sorted(str(m.message_id) for m in completed_only.received) == sorted(completed)


@pytest.mark.slow
async def test_burst_of_2000_events_over_200_tasks_arrives_complete_and_ordered(broker: Broker) -> None:
    everything = await broker.sink("task.#")
    sent = interleave(progress_run("generate_summary", 10) for _ in range(200))
    assert len(sent) == 2000

    async with bridged(broker.exchange) as (bus, bridge):
        in_flight = peak = 0
        publish_one = bridge._publish

        async def counted(outgoing: Any) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await publish_one(outgoing)
            finally:
                in_flight -= 1

        bridge._publish = counted  # type: ignore[method-assign]
        started = time.perf_counter()
        for p in sent:
            await bus.publish(p.event, p.task)
        await everything.wait_for((p.event.event_id for p in sent), timeout=60)
        elapsed = time.perf_counter() - started

    rate = len(sent) / elapsed
    print(f"\nbridge burst: {len(sent)} events over 200 tasks in {elapsed:.2f}s = {rate:,.0f} events/s, "
          f"up to {peak} publishes in flight")  # fmt: skip
    assert len(everything.received) == len(sent)
    assert everything.first_occurrences_per_task() == sent_per_task(sent)
    assert peak > 50, "publishes were not pipelined across tasks"
    assert bridge.published == len(sent) and bridge.publish_failures == 0


@pytest.mark.slow
async def test_connection_cut_mid_stream_every_event_still_arrives_in_order_per_task(broker: Broker) -> None:
    everything = await broker.sink("task.#")
    per_task = [progress_run("generate_summary", 10) for _ in range(100)]
    target = urlsplit(RABBITMQ_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.open()
    credentials = target.netloc.rpartition("@")[0]
    via_proxy = urlunsplit(
        target._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}", query="reconnect_interval=0.2")
    )
    sent: list[Published] = []
    try:
        async with bridged(
            broker.exchange, via_proxy, confirm_timeout=1.0, initial_backoff=0.05, max_backoff=0.5
        ) as (bus, bridge):
            reopen: asyncio.Task[None] | None = None
            for wave in range(10):  # one event of every task per wave, 100 ms apart
                for events in per_task:
                    await bus.publish(events[wave].event, events[wave].task)
                    sent.append(events[wave])
                if wave == 3:
                    await proxy.close()  # every connection cut, nothing listening for a while
                    reopen = asyncio.create_task(_reopen_after(proxy, 1.5))
                await asyncio.sleep(0.1)
            assert reopen is not None
            await reopen
            await everything.wait_for((p.event.event_id for p in sent), timeout=60)
            assert await bus.drain(timeout=10)
            stats = bus.stats()[bridge.name]
    finally:
        await proxy.close()

    duplicates = len(everything.received) - len(sent)
    print(f"\nconnection cut: {bridge.retries} retries, {bridge.publish_failures} failed publishes, "
          f"{duplicates} duplicate deliveries")  # fmt: skip
    assert everything.first_occurrences_per_task() == sent_per_task(sent)
    assert bridge.retries > 0 and bridge.publish_failures > 0
    assert stats.dropped == 0 and stats.errors == 0
    assert bridge.abandoned == 0


async def test_nacked_events_are_retried_and_later_events_of_their_task_wait_for_them(
    broker: Broker,
) -> None:
    everything = await broker.sink("task.#")
    unchoke = await broker.choke("task.*.progress")  # every progress event is nacked until removed
    kinds = [EventType.SUBMITTED, EventType.STARTED, EventType.PROGRESS, EventType.COMPLETED]
    sent = interleave(lifecycle("generate_summary", kinds) for _ in range(20))
    before_progress = [p.event.event_id for p in sent if p.event.type is not EventType.COMPLETED]
    completed = {p.event.event_id for p in sent if p.event.type is EventType.COMPLETED}

    async with bridged(broker.exchange, initial_backoff=0.05, max_backoff=0.2) as (bus, bridge):
        for p in sent:
            await bus.publish(p.event, p.task)
        # The sink gets a copy of each nacked progress event; the broker still nacks the publish.
        await everything.wait_for(before_progress, timeout=10)
        await wait_until(lambda: bridge.retries >= 3 * 20, timeout=10, what="three retries of each")
        assert not completed & everything.ids(), "a completed event overtook its task's nacked progress"
        assert bridge.publish_failures >= 3 * 20 and bridge.published == 2 * 20

        await unchoke()
        await everything.wait_for((p.event.event_id for p in sent), timeout=10)
        assert await bus.drain(timeout=5)
    assert everything.first_occurrences_per_task() == sent_per_task(sent)
    assert bridge.published == len(sent) and bridge.abandoned == 0


async def test_close_ends_an_observe_that_is_retrying_and_counts_the_abandoned_events(broker: Broker) -> None:
    await broker.choke("task.#")  # nothing is ever confirmed
    # observed directly, as the bus hands them over: each with a view of the task
    sent = [
        Published(p.event, TaskView.of(p.task) if p.task is not None else None)
        for p in interleave(progress_run("generate_summary", 4) for _ in range(5))
    ]
    connection = BrokerConnection(RABBITMQ_URL, name="test-events-bridge")
    await connection.start()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    bridge = ExternalEventBridge(
        connection, broker.exchange, initial_backoff=0.05, max_backoff=0.1, metrics=metrics
    )
    try:
        observing = asyncio.create_task(bridge.observe(sent))
        await wait_until(lambda: bridge.retries >= 5, timeout=10, what="retries")
        assert not observing.done()  # an unconfirmed batch is not given up on
        await bridge.close()
        await asyncio.wait_for(observing, timeout=2)
    finally:
        await connection.close()
    assert bridge.published == 0 and bridge.abandoned == len(sent)
    await bridge.observe(sent)  # a closed bridge publishes nothing and says so
    assert bridge.abandoned == 2 * len(sent)
    assert bridged_count(registry, "abandoned") == 2 * len(sent)  # what Prometheus sees
    assert bridged_count(registry, "failed") == bridge.publish_failures >= 5
    assert bridged_count(registry, "published") == 0


async def _reopen_after(proxy: TcpProxy, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await proxy.open()


class BrokenObserver:
    name = "broken-observer"

    def __init__(self) -> None:
        self.calls = 0

    async def observe(self, batch: Sequence[Published]) -> None:
        self.calls += 1
        raise RuntimeError("this observer always fails")


async def test_a_failing_observer_next_to_the_bridge_is_counted_and_logged_and_events_still_flow(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    everything = await broker.sink("task.#")
    sent = interleave(progress_run("generate_summary", 5) for _ in range(10))
    broken = BrokenObserver()
    with caplog.at_level(logging.ERROR, logger="taskplatform.events.bus"):
        async with bridged(broker.exchange, before=[broken]) as (bus, bridge):
            for p in sent:
                await bus.publish(p.event, p.task)
            await everything.wait_for((p.event.event_id for p in sent), timeout=10)
            assert await bus.drain(timeout=5)
            stats = bus.stats()
    assert everything.first_occurrences_per_task() == sent_per_task(sent)
    assert broken.calls >= 1 and stats["broken-observer"].errors == broken.calls
    assert stats[bridge.name].errors == 0 and stats[bridge.name].delivered == len(sent)
    failures = [r for r in caplog.records if "observer broken-observer failed" in r.getMessage()]
    assert failures and failures[0].levelno == logging.ERROR and failures[0].exc_info is not None
