"""The event bus on its own: critical subscribers, rejection, observer buffers."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest

from taskplatform.events import Delivery, EventBus, Published, TaskStarted, TaskView
from taskplatform.models import BackgroundTask, ErrorInfo, SubTaskStatusSummary, TaskStatus, utcnow


def _event(i: int) -> TaskStarted:
    return TaskStarted(task_id=f"task-{i}", task_type="t")


class Slow:
    """Takes 5 ms per batch: alive, but slower than the producer."""

    name = "slow"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def observe(self, batch: Sequence[Published]) -> None:
        await asyncio.sleep(0.005)
        self.seen.extend(p.event.task_id for p in batch)


class Stuck:
    """Never finishes its first batch (a bridge whose broker is gone)."""

    name = "stuck"

    async def observe(self, batch: Sequence[Published]) -> None:
        await asyncio.sleep(3600)


class Rejecting:
    name = "rejecting"

    async def handle(self, delivery: Delivery) -> None:
        if delivery.event.task_id.endswith("3"):
            delivery.refuse("not applicable")


async def test_a_slow_observer_pushes_back_and_loses_nothing() -> None:
    bus = EventBus(observer_buffer=10, observer_batch=5)
    slow = Slow()
    bus.add_observer(slow)
    bus.start()
    for i in range(200):
        await bus.publish(_event(i))
    assert await bus.drain(5)
    await bus.close()
    assert slow.seen == [f"task-{i}" for i in range(200)]
    assert bus.stats()["slow"].dropped == 0


async def test_an_observer_idle_for_longer_than_the_stall_time_still_gets_back_pressure() -> None:
    bus = EventBus(observer_buffer=10, observer_batch=5, stall_seconds=0.2)
    slow = Slow()  # alive: 5 ms a batch
    bus.add_observer(slow)
    bus.start()
    await bus.publish(_event(0))
    await asyncio.sleep(0.5)  # quiet for longer than the stall time
    for i in range(1, 100):
        await bus.publish(_event(i))  # a burst: the producer waits for room, nothing is dropped
    assert await bus.drain(5)
    await bus.close()
    assert bus.stats()["slow"].dropped == 0
    assert slow.seen == [f"task-{i}" for i in range(100)]


async def test_a_stalled_observer_drops_its_oldest_events_without_holding_producers_up() -> None:
    drops: list[str] = []
    bus = EventBus(observer_buffer=10, observer_batch=5, stall_seconds=0.2, on_observer_drop=drops.append)
    bus.add_observer(Stuck())
    bus.start()
    started = time.monotonic()
    for i in range(100):
        await bus.publish(_event(i))
    elapsed = time.monotonic() - started
    stats = bus.stats()["stuck"]
    assert stats.dropped == 100 - 5 - 10  # one batch taken, a full buffer kept
    assert drops == ["stuck"] * stats.dropped  # each drop reported (the metric)
    assert stats.pending == 10
    assert elapsed < 2.0  # waited for the stall to show once, not per event
    await bus.close(timeout=0.1)


async def test_a_rejected_event_reaches_no_observer() -> None:
    bus = EventBus()
    bus.add_critical(Rejecting())
    slow = Slow()
    bus.add_observer(slow)
    bus.start()
    deliveries = [await bus.publish(_event(i)) for i in range(5)]
    assert await bus.drain(5)
    await bus.close()
    assert [d.accepted for d in deliveries] == [True, True, True, False, True]
    assert deliveries[3].rejected == "not applicable"
    assert slow.seen == ["task-0", "task-1", "task-2", "task-4"]


async def test_a_failing_critical_subscriber_fails_the_publish() -> None:
    class Failing:
        name = "failing"

        async def handle(self, delivery: Delivery) -> None:
            raise RuntimeError("store down")

    bus = EventBus()
    bus.add_critical(Failing())
    slow = Slow()
    bus.add_observer(slow)
    bus.start()
    with pytest.raises(RuntimeError, match="store down"):
        await bus.publish(_event(1))
    assert await bus.drain(1)
    await bus.close()
    assert slow.seen == []


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.items: list[Published] = []

    async def observe(self, batch: Sequence[Published]) -> None:
        self.items.extend(batch)


class FailsOnce:
    """A critical subscriber whose first call fails (the store went away for a moment)."""

    name = "fails-once"

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, delivery: Delivery) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("store down")


async def test_observers_see_a_retried_event_as_a_duplicate_only_if_they_were_given_it() -> None:
    bus = EventBus()
    failing = FailsOnce()
    bus.add_critical(failing)
    recording = Recording()
    bus.add_observer(recording)
    bus.start()
    lost, passed = _event(1), _event(2)
    with pytest.raises(RuntimeError):
        await bus.publish(lost)  # failed before observers were given it
    await bus.publish(lost)  # the producer's retry: the first time observers get it
    await bus.publish(passed)
    await bus.publish(passed)  # a retry after a follow-up failed: observers had it
    assert await bus.drain(5)
    await bus.close()
    assert [(p.event.event_id, p.duplicate) for p in recording.items] == [
        (lost.event_id, False),
        (passed.event_id, False),
        (passed.event_id, True),
    ]


async def test_the_bridge_skips_event_types_it_was_not_asked_to_publish() -> None:
    from taskplatform.events import EventType
    from taskplatform.events.bridge import ExternalEventBridge
    from taskplatform.messaging.connection import BrokerConnection

    # Never connected: publishing anything would fail; skipped events never reach the broker.
    broker = BrokerConnection("amqp://guest:guest@127.0.0.1:1/", name="unused")
    bridge = ExternalEventBridge(broker, "x", types=[EventType.COMPLETED], confirm_timeout=0.2)
    await bridge.observe([Published(_event(i), None) for i in range(3)])
    assert bridge.published == 0 and bridge.publish_failures == 0


async def test_observers_hold_a_view_of_the_task_not_its_document() -> None:
    parent = "p" * 36
    task = BackgroundTask(
        task_type="t",
        user_id="alice",
        parameters={"blob": "x" * 100_000},
        metadata={"kept": "out"},
        parent_task_id=parent,
        tags=["a", "b"],
        priority=3,
        result={"value": 1},
        progress={"percent": 50},
        error_info=ErrorInfo(type="E", message="m", attempt=1),
        sub_task_status_summary=SubTaskStatusSummary(total=2, completed=1),
        retry_count=1,
        replays=2,
        version=7,
        created_at=utcnow() - timedelta(seconds=30),
        started_at=utcnow() - timedelta(seconds=20),
        completed_at=utcnow() - timedelta(seconds=10),
        next_attempt_at=utcnow() + timedelta(seconds=10),
        status=TaskStatus.RETRYING,
    )
    bus = EventBus()
    keeping = Recording()
    bus.add_observer(keeping)
    bus.start()
    await bus.publish(TaskStarted(task_id=task.id, task_type="t"), task)
    await bus.publish(_event(1))  # an event without a task: none to view
    assert await bus.drain(5)
    await bus.close()
    view = keeping.items[0].task
    assert isinstance(view, TaskView) and keeping.items[1].task is None
    # every field the observers read, as the document had it (no two alike, so a field read
    # from the wrong place shows)
    for name in TaskView.__slots__:
        expected = getattr(task, name)
        assert getattr(view, name) == (tuple(expected) if name == "tags" else expected), name
    # ... and nothing more: the parameters (100 kB here), metadata and the document itself are
    # not held by a buffered event
    assert not hasattr(view, "parameters") and not hasattr(view, "metadata")
    assert task not in gc.get_referents(view)
