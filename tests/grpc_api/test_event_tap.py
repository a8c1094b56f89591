"""The watch's parts on their own, with a broker that fails on demand: the tap's set-up closes a
half-made channel and tries again on the next watch; events that do not parse, or belong to no
watch, are dropped; a watch that falls behind gets one marker and reads the store; the stream
skips events it already reflects and carries progress and errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from taskplatform.events.external import ErrorSummary, ExternalTaskEvent, ProgressSummary, TaskSnapshot
from taskplatform.events.models import EventType, Origin
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.watch import WATCH_BUFFER, EventTap, WatchesLimited, WatchSlots, update_of, watch
from taskplatform.models import BackgroundTask, TaskStatus


class Queue:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.consumer: Callable[[Any], Awaitable[None]] | None = None

    async def bind(self, exchange: str, routing_key: str) -> None:
        if self.channel.broker.fail_bind:
            raise ConnectionError("the broker went away mid-way")
        self.channel.bound.append((exchange, routing_key))

    async def consume(self, callback: Callable[[Any], Awaitable[None]], no_ack: bool) -> None:
        assert no_ack
        self.consumer = callback


class Channel:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.closed = False
        self.bound: list[tuple[str, str]] = []
        self.queue: Queue | None = None

    async def declare_queue(self, exclusive: bool, auto_delete: bool) -> Queue:
        assert exclusive and auto_delete  # it goes with its channel
        self.queue = Queue(self)
        return self.queue

    async def close(self) -> None:
        self.closed = True


class Broker:
    """``channel()`` as BrokerConnection has it; ``fail_bind`` breaks the set-up half-way."""

    def __init__(self) -> None:
        self.channels: list[Channel] = []
        self.fail_bind = False

    async def channel(self) -> Channel:
        made = Channel(self)
        self.channels.append(made)
        return made


class Message:
    def __init__(self, body: bytes, correlation_id: str | None) -> None:
        self.body = body
        self.correlation_id = correlation_id


def task(task_id: str = "t1", status: TaskStatus = TaskStatus.RUNNING, version: int = 1) -> BackgroundTask:
    return BackgroundTask(id=task_id, task_type="test_noop", status=status, version=version)


def event(
    task_id: str = "t1",
    sequence: int | None = 2,
    status: TaskStatus = TaskStatus.RUNNING,
    kind: EventType = EventType.PROGRESS,
    **fields: Any,
) -> ExternalTaskEvent:
    return ExternalTaskEvent(
        event_id=f"e{sequence}",
        type=kind,
        routing_key=f"task.test_noop.{kind.value}",
        occurred_at=datetime.now(UTC),
        sequence=sequence,
        task=TaskSnapshot(id=task_id, type="test_noop", status=status),
        producer={"origin": Origin.WORKER},
        **fields,
    )


def message(e: ExternalTaskEvent) -> Message:
    return Message(e.model_dump_json().encode(), e.task.id)


def tap_of(broker: Broker) -> EventTap:
    return EventTap(broker, "events")  # type: ignore[arg-type]  (the part of BrokerConnection it uses)


async def test_a_set_up_that_fails_half_way_closes_its_channel_and_the_next_watch_tries_again() -> None:
    broker = Broker()
    broker.fail_bind = True
    tap = tap_of(broker)
    with pytest.raises(ConnectionError):
        async with tap.subscribed("t1"):
            pass  # pragma: no cover  (the set-up fails)
    assert [c.closed for c in broker.channels] == [True]  # no half-made channel left open
    assert tap.watching == 0
    broker.fail_bind = False
    async with tap.subscribed("t1"), tap.subscribed("t1"), tap.subscribed("t2"):
        assert tap.watching == 3
        assert len(broker.channels) == 2  # one more channel, once, for every watch after it
        assert broker.channels[1].bound == [("events", "task.#")]
    assert tap.watching == 0
    await tap.close()
    assert broker.channels[1].closed
    await tap.close()  # twice is harmless


async def test_events_that_do_not_parse_or_belong_to_no_watch_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker()
    tap = tap_of(broker)
    async with tap.subscribed("t1") as events:
        queue = broker.channels[0].queue
        assert queue is not None and queue.consumer is not None
        await queue.consumer(message(event("t2")))  # another task's: nobody watches it
        await queue.consumer(Message(b"{}", None))  # no task id at all
        with caplog.at_level(logging.WARNING, logger="taskplatform.grpc_api.watch"):
            await queue.consumer(Message(b'{"not": "an event"}', "t1"))
        assert "is not a task event" in caplog.text
        assert events.empty()
        await queue.consumer(message(event("t1")))
        assert (await events.get()).task.id == "t1"
    assert tap.received == 4


async def test_a_watch_that_falls_behind_gets_one_marker_instead_of_its_events() -> None:
    broker = Broker()
    tap = tap_of(broker)
    async with tap.subscribed("t1") as slow, tap.subscribed("t1") as keeping_up:
        queue = broker.channels[0].queue
        assert queue is not None and queue.consumer is not None
        for n in range(WATCH_BUFFER):
            await queue.consumer(message(event(sequence=n + 2)))
            if n % 2:
                keeping_up.get_nowait()
        assert slow.full()
        await queue.consumer(message(event(sequence=WATCH_BUFFER + 2)))
        assert slow.qsize() == 1 and slow.get_nowait() is None  # read the store instead
        assert not keeping_up.full() and keeping_up.qsize() == WATCH_BUFFER // 2 + 1


async def test_the_stream_reads_the_store_after_an_overrun_and_skips_what_it_reflects() -> None:
    broker = Broker()
    tap = tap_of(broker)
    reads: list[BackgroundTask] = [
        task(version=3),
        task(version=5),
        task(status=TaskStatus.COMPLETED, version=7),
    ]
    read_count = 0

    async def read() -> BackgroundTask:
        nonlocal read_count
        read_count += 1
        return reads.pop(0)

    stream = watch(tap, "t1", read, resync=30)
    first = await anext(stream)
    assert first.event == "snapshot" and first.sequence == 3
    queue = broker.channels[0].queue
    assert queue is not None and queue.consumer is not None
    await queue.consumer(message(event(sequence=3)))  # already in the snapshot: skipped
    await queue.consumer(message(event(sequence=None, progress=ProgressSummary(percent=40.0))))
    second = await anext(stream)  # an event without a sequence is sent as it comes
    assert second.event == "progress" and second.sequence == 0 and second.progress["percent"] == 40
    assert tap._watches["t1"]  # still subscribed
    for _ in range(WATCH_BUFFER + 1):  # an overrun: one marker left, the store is read
        await queue.consumer(message(event(sequence=4)))
    third = await anext(stream)
    assert third.event == "snapshot" and third.sequence == 5 and read_count == 2
    await queue.consumer(message(event(sequence=6, status=TaskStatus.COMPLETED, kind=EventType.COMPLETED)))
    fourth = await anext(stream)
    assert fourth.event == "completed" and fourth.status == pb.TASK_STATUS_COMPLETED
    last = await anext(stream)  # an ending: the store's final state closes the stream
    assert last.event == "snapshot" and last.sequence == 7 and read_count == 3
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert tap.watching == 0


async def test_a_silence_reads_the_store_and_sends_nothing_when_it_did_not_move() -> None:
    broker = Broker()
    tap = tap_of(broker)
    reads = [task(version=3), task(version=3), task(status=TaskStatus.FAILED, version=4)]

    async def read() -> BackgroundTask:
        return reads.pop(0)

    sent = [u async for u in watch(tap, "t1", read, resync=0.05)]
    assert [(u.event, u.sequence) for u in sent] == [("snapshot", 3), ("snapshot", 4)]
    assert sent[-1].status == pb.TASK_STATUS_FAILED and not reads


async def test_the_read_refusing_ends_the_stream_with_its_error_and_unsubscribes() -> None:
    tap = tap_of(Broker())

    async def read() -> BackgroundTask:
        raise PermissionError("not yours")

    with pytest.raises(PermissionError):
        await anext(watch(tap, "t1", read))
    assert tap.watching == 0


def test_an_update_carries_the_events_error_and_progress() -> None:
    failing = event(
        status=TaskStatus.RETRYING,
        kind=EventType.RETRYING,
        error=ErrorSummary(type="TimeoutError", message="slow", reason="timeout", attempt=2),
        progress=ProgressSummary(percent=10.0, message="a tenth"),
    )
    update = update_of(failing)
    assert update.status == pb.TASK_STATUS_RETRYING
    assert (update.error.type, update.error.message, update.error.reason, update.error.attempt) == (
        "TimeoutError",
        "slow",
        "timeout",
        2,
    )
    assert dict(update.progress) == {"percent": 10, "message": "a tenth"}
    no_reason = update_of(event(error=ErrorSummary(type="ValueError", message="bad")))
    assert not no_reason.error.HasField("reason") and no_reason.error.type == "ValueError"


async def test_an_abandoned_stream_unsubscribes_when_closed() -> None:
    tap = tap_of(Broker())

    async def read() -> BackgroundTask:
        return task()

    stream = watch(tap, "t1", read, resync=30)
    await anext(stream)
    assert tap.watching == 1
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await stream.aclose()
    assert tap.watching == 0


def test_watch_slots_hold_at_most_the_limit_per_caller_and_free_on_exit() -> None:
    slots = WatchSlots(limit=2)
    with slots.held("alice"), slots.held("alice"):
        with pytest.raises(WatchesLimited, match="a caller may hold 2 at once"), slots.held("alice"):
            pass  # pragma: no cover  (refused)
        with slots.held("bob"):  # another caller's slots are their own
            assert (slots.of("alice"), slots.of("bob")) == (2, 1)
    assert slots.of("alice") == 0 and slots.of("bob") == 0
    with pytest.raises(RuntimeError), slots.held("alice"):  # a watch that fails frees its slot too
        raise RuntimeError("the stream broke")
    assert slots.of("alice") == 0
