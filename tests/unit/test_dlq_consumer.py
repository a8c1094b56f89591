"""The DLQ consumer over the in-memory store, the real event bus and state aggregator, and the
fake broker: which dead message marks its task DEAD_LETTER, what is counted, and what happens to
a message that cannot be stored — retried, parked (and why), handed back after a long outage, or
returned to the queue when none of that can be done. No RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from taskplatform.deadletters.consumer import PARK_CAPTURE_FAILED, PARK_STORE_REFUSED, DeadLetterConsumer
from taskplatform.deadletters.parking import (
    HEADER_PARKED_ATTEMPTS,
    HEADER_PARKED_DETAIL,
    HEADER_PARKED_REASON,
)
from taskplatform.errors import BrokerError, StoreError
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.metrics.registry import Metrics
from taskplatform.models import BackgroundTask, DeadLetter, ErrorInfo, TaskMessage, TaskStatus, utcnow
from taskplatform.models.message import HEADER_DEAD_REASON
from taskplatform.store.deadletters import UpsertOutcome
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.testing.broker import FakeBroker, FakeChannel, FakeDelivery, FakePublisher

DLQ = "tasks.dlq.queue"
PARKING = "tasks.dlq.parking"
NODE = "dlq-1"


class DeadDelivery(FakeDelivery):
    """A delivery from the DLQ: the message properties capture and parking read, too."""

    def __init__(self, body: bytes, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.exchange = "tasks.dlx"
        self.content_encoding: str | None = None
        self.priority: int | None = None
        self.reply_to: str | None = None
        self.timestamp = utcnow()
        self.delivery_mode = 2
        self.expiration: int | None = None

    @classmethod
    def dead(cls, task: BackgroundTask, *, headers: dict[str, Any] | None = None) -> DeadDelivery:
        """The task's current message as the DLQ hands it over, with ``headers`` added."""
        plain = FakeDelivery.of(task)
        return cls(
            plain.body,
            headers={**plain.headers, **(headers or {})},
            message_id=plain.message_id,
            routing_key=plain.routing_key,
        )


class RefusingStore(MemoryTaskStore):
    """The in-memory store with dead-letter writes that fail: ``refuse`` (an exception to raise
    while the store answers, ``refusals`` times or for good); ``refuse_mark`` makes the
    DEAD_LETTER mark a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: Exception | None = None
        self.refusals: int | None = None
        self.refuse_mark = False
        self.writes = 0

    async def upsert_dead_letter(self, record: DeadLetter) -> tuple[DeadLetter, UpsertOutcome]:
        self.writes += 1
        if self.refuse is not None:
            error = self.refuse
            if self.refusals is not None:
                self.refusals -= 1
                if self.refusals <= 0:
                    self.refuse = None
            raise error
        return await super().upsert_dead_letter(record)

    async def mark_dead_letter(
        self,
        task_id: str,
        *,
        error: ErrorInfo | None,
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        if self.refuse_mark:
            return None
        return await super().mark_dead_letter(task_id, error=error, attempt=attempt, event_id=event_id)


@dataclass
class Parts:
    store: RefusingStore
    bus: EventBus
    broker: FakeBroker
    publisher: FakePublisher
    metrics: Metrics
    registry: CollectorRegistry

    def consumer(self, **options: Any) -> DeadLetterConsumer:
        settings: dict[str, Any] = {
            "publisher": self.publisher,
            "parking_queue": PARKING,
            "metrics": self.metrics,
            "store_backoff": 0.001,
            "max_backoff": 0.002,
            "max_attempts": 3,
        }
        settings.update(options)
        return DeadLetterConsumer(self.broker, DLQ, self.store, self.bus, node_id=NODE, **settings)  # type: ignore[arg-type]

    def counted(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    store = RefusingStore()
    await store.open()
    bus = EventBus()
    StateAggregator(store, bus, node_id=NODE).attach()
    bus.start()
    registry = CollectorRegistry()
    try:
        yield Parts(store, bus, FakeBroker(), FakePublisher(), Metrics(registry), registry)
    finally:
        await bus.close()
        await store.close()


async def _stored(store: MemoryTaskStore, **fields: Any) -> BackgroundTask:
    task = BackgroundTask(task_type="generate_summary", **fields)
    await store.create(task)
    return task


async def _settle(consumer: DeadLetterConsumer, delivery: FakeDelivery) -> None:
    await consumer._on_message(delivery)  # type: ignore[arg-type]  # the queue's callback


# ---------------------------------------------------------------- consuming


async def test_start_consumes_the_dlq_with_its_prefetch_and_stop_lets_go(parts: Parts) -> None:
    consumer = parts.consumer(prefetch=7)
    await consumer.start()
    channel = parts.broker.channels[-1]
    queue = parts.broker.queue(DLQ)
    assert channel.prefetch_count == 7 and queue.consumed

    task = await _stored(parts.store)
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries"})
    await queue.deliver(delivery)
    assert delivery.settlement == "ack" and consumer.captured == 1

    await consumer.stop()
    assert not queue.consumed and channel.is_closed
    await consumer.stop()  # stopping twice is harmless


async def test_stop_waits_for_a_message_in_flight_that_settles_within_the_grace(parts: Parts) -> None:
    consumer = parts.consumer(outage_hold=60.0)
    await consumer.start()
    task = await _stored(parts.store)
    parts.store.available = False
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries"})
    held = asyncio.create_task(parts.broker.queue(DLQ).deliver(delivery))
    await asyncio.sleep(0.02)
    parts.store.available = True  # the outage ends as the worker stops

    await consumer.stop(grace=5.0)

    assert held.done() and not held.cancelled()
    assert delivery.settlement == "ack" and consumer.captured == 1


async def test_stop_cancels_a_capture_still_waiting_on_the_store(parts: Parts) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    original_get = parts.store.get

    async def slow_get(task_id: str) -> BackgroundTask | None:
        entered.set()
        await release.wait()  # a store that takes its time to answer
        return await original_get(task_id)

    parts.store.get = slow_get  # type: ignore[method-assign]
    consumer = parts.consumer()
    await consumer.start()
    task = await _stored(parts.store)
    delivery = DeadDelivery.dead(task)
    held = asyncio.create_task(parts.broker.queue(DLQ).deliver(delivery))
    await asyncio.wait_for(entered.wait(), timeout=5)

    await consumer.stop(grace=0.05)

    assert held.cancelled() and delivery.settlement is None
    assert parts.store.writes == 0  # the capture was cut short, not tried again


async def test_stop_gives_up_a_message_held_through_an_outage_unsettled(parts: Parts) -> None:
    # a short backoff: the stop lands in a ping of the store as often as between tries, and a
    # ping must not swallow it (store.answers)
    consumer = parts.consumer(outage_hold=60.0, store_backoff=0.001, max_backoff=0.002)
    await consumer.start()
    task = await _stored(parts.store)
    parts.store.available = False
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries"})
    held = asyncio.create_task(parts.broker.queue(DLQ).deliver(delivery))
    await asyncio.sleep(0.05)
    assert not held.done()

    await consumer.stop(grace=0.05)

    assert held.done() and held.cancelled()
    assert delivery.settlement is None  # unacked: the broker gives it back to the queue
    assert consumer.captured == 0


# ---------------------------------------------------------------- capture and marking


async def test_the_current_message_of_a_waiting_task_marks_it_dead_with_the_brokers_reason(
    parts: Parts,
) -> None:
    task = await _stored(parts.store)
    delivery = DeadDelivery.dead(task, headers={"x-death": [{"reason": "delivery_limit", "count": 20}]})

    await _settle(parts.consumer(), delivery)

    got = await parts.store.get(task.id)
    record = await parts.store.get_dead_letter(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER
    assert record is not None and record.kind == "task" and record.reason == "delivery_limit"
    assert delivery.settlement == "ack"
    # the task's death is counted by the metrics observer when it is marked, not here
    assert parts.counted("taskplatform_dead_letters_total", task_type="unknown", reason="delivery_limit") == 0


async def test_a_failed_task_keeps_the_reason_and_error_its_attempt_recorded(parts: Parts) -> None:
    error = ErrorInfo(type="ValueError", message="bad input", attempt=0, reason="permanent")
    task = await _stored(parts.store, status=TaskStatus.FAILED, error_info=error)
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "rejected"})

    await _settle(parts.consumer(), delivery)

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER
    assert got.error_info is not None and got.error_info.message == "bad input"


async def test_a_task_running_under_a_live_lease_is_not_marked_by_its_dead_message(parts: Parts) -> None:
    task = await _stored(parts.store)
    running = await parts.store.try_set_running(
        task.id, attempt=0, node_id="w", lease_until=parts.store.now() + timedelta(seconds=60)
    )
    assert running is not None

    await _settle(parts.consumer(), DeadDelivery.dead(running, headers={HEADER_DEAD_REASON: "duplicate"}))

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.RUNNING
    assert await parts.store.get_dead_letter(task.id) is not None  # the message is kept all the same


async def test_a_mark_the_store_turns_down_leaves_the_task_and_keeps_the_record(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskplatform.deadletters.consumer")
    task = await _stored(parts.store)
    parts.store.refuse_mark = True
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries"})

    await _settle(parts.consumer(), delivery)

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.QUEUED
    assert await parts.store.get_dead_letter(task.id) is not None
    assert f"task {task.id} not marked DEAD_LETTER" in caplog.text
    assert delivery.settlement == "ack"


async def test_a_malformed_message_is_counted_once_however_often_it_comes_back(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskplatform.deadletters.consumer")
    consumer = parts.consumer()

    first = DeadDelivery(b"\x00not json", headers={HEADER_DEAD_REASON: "bad-json"}, message_id="m-1")
    again = DeadDelivery(b"\x00not json", headers={HEADER_DEAD_REASON: "bad-json"}, message_id="m-1")
    await _settle(consumer, first)
    await _settle(consumer, again)

    assert first.settlement == again.settlement == "ack" and consumer.captured == 2
    assert parts.counted("taskplatform_dead_letters_total", task_type="unknown", reason="bad-json") == 1
    records = [r for r in caplog.records if "dead letter msg-" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]  # new, then seen before


async def test_a_message_of_a_task_no_longer_stored_is_recorded_and_counted(parts: Parts) -> None:
    gone = BackgroundTask(task_type="generate_summary")  # never stored (or purged since)
    delivery = DeadDelivery.dead(gone, headers={HEADER_DEAD_REASON: "unknown-task"})

    await _settle(parts.consumer(), delivery)

    record = await parts.store.get_dead_letter(gone.id)
    assert record is not None and record.task_id == gone.id
    assert parts.counted("taskplatform_dead_letters_total", task_type="unknown", reason="unknown-task") == 1


# ---------------------------------------------------------------- refusals and parking


@pytest.mark.parametrize("with_metrics", [True, False], ids=["metrics", "no-metrics"])
async def test_a_record_the_store_answers_for_but_refuses_is_parked_after_max_attempts(
    parts: Parts, with_metrics: bool
) -> None:
    task = await _stored(parts.store)
    parts.store.refuse = StoreError("value refused by the database (injected)")
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries", "x-custom": "kept"})
    consumer = parts.consumer(max_attempts=3, metrics=parts.metrics if with_metrics else None)

    await _settle(consumer, delivery)

    assert parts.store.writes == 3
    assert delivery.settlement == "ack" and consumer.parked == 1 and consumer.captured == 0
    [parked] = parts.publisher.published
    assert parked.kind == "raw" and parked.routing_key == PARKING and parked.exchange == ""
    assert parked.headers[HEADER_PARKED_REASON] == PARK_STORE_REFUSED
    assert parked.headers[HEADER_PARKED_ATTEMPTS] == 3
    assert "value refused by the database" in parked.headers[HEADER_PARKED_DETAIL]
    assert (
        parked.headers["x-custom"] == "kept" and parked.raw is not None and parked.raw.body == delivery.body
    )
    assert parts.counted("taskplatform_dead_letters_parked_total", reason=PARK_STORE_REFUSED) == (
        1 if with_metrics else 0
    )


async def test_a_capture_that_fails_other_than_in_the_store_is_parked_as_capture_failed(parts: Parts) -> None:
    task = await _stored(parts.store)
    parts.store.refuse = ValueError("record does not validate")
    consumer = parts.consumer(max_attempts=1)

    await _settle(consumer, DeadDelivery.dead(task))

    [parked] = parts.publisher.published
    assert parked.headers[HEADER_PARKED_REASON] == PARK_CAPTURE_FAILED
    assert parts.counted("taskplatform_dead_letters_parked_total", reason=PARK_CAPTURE_FAILED) == 1


async def test_a_refusal_that_clears_within_the_tries_is_captured_not_parked(parts: Parts) -> None:
    task = await _stored(parts.store)
    parts.store.refuse = StoreError("deadlock detected (injected)")
    parts.store.refusals = 2
    consumer = parts.consumer(max_attempts=3)
    delivery = DeadDelivery.dead(task)

    await _settle(consumer, delivery)

    assert delivery.settlement == "ack" and consumer.captured == 1 and consumer.parked == 0
    assert parts.publisher.published == []
    assert await parts.store.get_dead_letter(task.id) is not None


@pytest.mark.parametrize("setup", ["no parking queue", "no publisher"])
async def test_without_a_parking_queue_a_refused_record_goes_back_to_the_dlq(
    parts: Parts, setup: str
) -> None:
    task = await _stored(parts.store)
    parts.store.refuse = StoreError("refused (injected)")
    options = {"parking_queue": None} if setup == "no parking queue" else {"publisher": None}
    consumer = parts.consumer(max_attempts=1, **options)
    delivery = DeadDelivery.dead(task)

    await _settle(consumer, delivery)

    assert delivery.settlement == "requeue" and consumer.parked == 0
    assert parts.publisher.published == []


async def test_a_message_that_cannot_be_parked_goes_back_to_the_dlq(parts: Parts) -> None:
    task = await _stored(parts.store)
    parts.store.refuse = StoreError("refused (injected)")
    parts.publisher.fail(BrokerError("parking queue unroutable (fake)"))
    consumer = parts.consumer(max_attempts=1)
    delivery = DeadDelivery.dead(task)

    await _settle(consumer, delivery)

    assert delivery.settlement == "requeue" and consumer.parked == 0
    assert parts.counted("taskplatform_dead_letters_parked_total", reason=PARK_STORE_REFUSED) == 0


# ---------------------------------------------------------------- outages


async def test_an_outage_is_not_counted_as_a_try_and_the_message_is_stored_once_it_ends(parts: Parts) -> None:
    task = await _stored(parts.store)
    consumer = parts.consumer(max_attempts=1, outage_hold=60.0)
    parts.store.available = False
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries"})
    settling = asyncio.create_task(_settle(consumer, delivery))
    await asyncio.sleep(0.05)  # many tries, none counted: one counted try would park it
    assert not settling.done() and delivery.settlement is None

    parts.store.available = True
    await asyncio.wait_for(settling, timeout=5)

    assert delivery.settlement == "ack" and consumer.parked == 0 and consumer.captured == 1
    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.DEAD_LETTER


async def test_a_message_held_past_the_outage_hold_is_handed_back_as_a_copy(parts: Parts) -> None:
    task = await _stored(parts.store)
    parts.store.available = False
    consumer = parts.consumer(outage_hold=0.0)
    delivery = DeadDelivery.dead(task, headers={HEADER_DEAD_REASON: "max_retries", "x-delivery-count": 4})

    await _settle(consumer, delivery)

    assert delivery.settlement == "ack" and consumer.handed_back == 1
    [copy] = parts.publisher.published
    assert copy.routing_key == DLQ and copy.exchange == ""
    assert "x-delivery-count" not in copy.headers and copy.headers[HEADER_DEAD_REASON] == "max_retries"


@pytest.mark.parametrize("setup", ["publish fails", "no publisher"])
async def test_a_held_message_that_cannot_be_handed_back_is_requeued(parts: Parts, setup: str) -> None:
    task = await _stored(parts.store)
    parts.store.available = False
    if setup == "publish fails":
        parts.publisher.fail()
        consumer = parts.consumer(outage_hold=0.0)
    else:
        consumer = parts.consumer(outage_hold=0.0, publisher=None)
    delivery = DeadDelivery.dead(task)

    await _settle(consumer, delivery)

    assert delivery.settlement == "requeue" and consumer.handed_back == 0


async def test_a_message_whose_ack_fails_is_logged_and_left_to_the_broker(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    task = await _stored(parts.store)
    channel = FakeChannel()
    delivery = DeadDelivery.dead(task)
    delivery.arrive_on(channel)
    await channel.close()  # the connection dropped while the record was written

    await _settle(parts.consumer(), delivery)

    assert delivery.settlement is None  # neither acked nor nacked: the broker redelivers it
    assert "not settled; it goes back to the queue" in caplog.text
    assert await parts.store.get_dead_letter(task.id) is not None  # the redelivery finds it


async def test_a_replayed_copy_of_an_older_generation_does_not_mark_the_task(parts: Parts) -> None:
    task = await _stored(parts.store, replays=1)
    stale = TaskMessage.for_task(task).model_copy(update={"generation": 0})
    plain = FakeDelivery.of(stale)
    delivery = DeadDelivery(plain.body, headers=plain.headers, message_id=plain.message_id)

    await _settle(parts.consumer(), delivery)

    got = await parts.store.get(task.id)
    assert got is not None and got.status is TaskStatus.QUEUED
