"""The settler: an attempt's outcome is stored first, then its delivery is told (ack, dead-letter,
requeue, or replaced by a fresh copy)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aio_pika.exceptions import MessageProcessError

from taskplatform.errors import Cancelled, PermanentFailure, StoreError
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus
from taskplatform.models.message import HEADER_AWAIT_OWNER
from taskplatform.retry import RetryPolicy
from taskplatform.testing.broker import FakeChannel, FakeDelivery, FakePublisher
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.outcomes import Failed, Succeeded, format_traceback
from taskplatform.worker.recording import EventRecorder
from taskplatform.worker.settlement import Settler
from tests.unit.worker.conftest import NODE, Result, Transient

NewTask = Callable[..., Awaitable[BackgroundTask]]
POLICY = RetryPolicy(max_attempts=3, initial_delay=5.0, jitter=0.0)


def _raised(exc: BaseException) -> Failed:
    try:
        raise exc
    except BaseException as caught:
        return Failed(caught, format_traceback(caught))


async def _settle(settler: Settler, delivery: FakeDelivery, task: BackgroundTask, outcome: Any) -> bool:
    return await settler.settle_attempt(
        delivery,  # type: ignore[arg-type]
        task,
        outcome,
        policy=POLICY,
        retryable=(Transient,),
    )


async def test_a_success_is_stored_as_completed_before_its_delivery_is_acked(
    store: Any, settler: Settler, claimed: NewTask
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    seen_at_ack: list[TaskStatus] = []
    ack = delivery.ack

    async def ack_after_looking(multiple: bool = False) -> None:
        seen_at_ack.append((await store.get(task.id)).status)
        await ack()

    delivery.ack = ack_after_looking  # type: ignore[method-assign]
    assert await _settle(settler, delivery, task, Succeeded(Result(value=7)))
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.COMPLETED and stored.result == {"value": 7}
    assert delivery.settlement == "ack" and seen_at_ack == [TaskStatus.COMPLETED]


async def test_a_retryable_failure_stores_the_retry_publishes_it_delayed_and_acks(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, _raised(Transient("503")))
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.RETRYING and stored.retry_count == 1
    assert stored.error_info is not None and stored.error_info.type == "Transient"
    [retry] = publisher.published
    assert retry.kind == "not-before" and retry.message is not None and retry.message.attempt == 1
    assert retry.not_before == stored.next_attempt_at
    assert stored.outbox.status is OutboxStatus.PUBLISHED  # published here: the relay leaves it alone
    assert delivery.settlement == "ack"


async def test_a_retry_whose_publish_fails_is_left_to_the_outbox_relay_and_still_acked(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    publisher.fail()
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, _raised(Transient("503")))
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.RETRYING and stored.outbox.status is OutboxStatus.PENDING
    assert publisher.published == [] and delivery.settlement == "ack"


async def test_a_permanent_failure_dead_letters_the_task_and_rejects_its_delivery(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, _raised(PermanentFailure("negative")))
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.DEAD_LETTER and stored.error_info.reason == "permanent-failure"
    assert delivery.settlement == "dead-letter" and publisher.published == []


async def test_a_cancelled_attempt_ends_the_task_cancelled_and_acks(
    store: Any, settler: Settler, claimed: NewTask
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, Failed(Cancelled("stopped on request"), ""))
    assert (await store.get(task.id)).status is TaskStatus.CANCELLED
    assert delivery.settlement == "ack"


async def test_an_outcome_whose_claim_was_lost_requeues_the_delivery(
    store: Any, settler: Settler, new_task: NewTask
) -> None:
    # The store lost our claim (an unflushed commit in a crash): the task waits at this attempt.
    task = await new_task()
    running = task.model_copy(update={"status": TaskStatus.RUNNING, "execution_node_id": NODE})
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, running, Succeeded(Result(value=1)))
    assert (await store.get(task.id)).status is TaskStatus.QUEUED
    assert delivery.settlement == "requeue"  # the message must come back, not be acked away


async def test_a_stale_outcome_of_an_attempt_taken_over_is_not_applied_and_its_delivery_acked(
    store: Any, settler: Settler, claimed: NewTask
) -> None:
    task = await claimed()
    await store.record_cancelled(task.id, attempt=0, node_id=NODE)  # settled elsewhere meanwhile
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, Succeeded(Result(value=1)))
    assert (await store.get(task.id)).status is TaskStatus.CANCELLED
    assert delivery.settlement == "ack"


async def test_a_store_outage_during_settlement_hands_a_copy_back_and_leaves_the_claim(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    store.down = True
    assert not await _settle(settler, delivery, task, Succeeded(Result(value=1)))  # not recorded
    [copy] = publisher.published
    assert copy.kind == "task" and copy.headers[HEADER_AWAIT_OWNER] == NODE  # waits for our lease
    assert delivery.settlement == "ack"  # a copy, not a requeue: no delivery counted
    store.down = False
    assert (await store.get(task.id)).status is TaskStatus.RUNNING


async def test_a_settlement_during_a_brief_store_outage_is_retried_until_stored(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    store.down = True
    settling = asyncio.create_task(_settle(settler, delivery, task, Succeeded(Result(value=2))))
    await asyncio.sleep(0.05)
    assert delivery.settlement is None  # nothing acked while the outcome is not stored
    store.down = False
    assert await settling
    assert (await store.get(task.id)).status is TaskStatus.COMPLETED
    assert delivery.settlement == "ack" and publisher.published == []


async def test_an_outcome_the_store_refuses_fails_the_attempt_for_good(
    store: Any, bus: EventBus, publisher: FakePublisher, config: WorkerConfig, claimed: NewTask
) -> None:
    # A hold long enough for three refusals: a refusal is told from an outage well before it ends.
    settler = Settler(EventRecorder(store, bus, node_id=NODE, store_hold=30.0), publisher, config)  # type: ignore[arg-type]
    task = await claimed()
    store.refused.add("record_completions")  # the store answers, but will not take this result
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, Succeeded(Result(value=3)))
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.DEAD_LETTER
    assert "could not be stored" in stored.error_info.message
    assert delivery.settlement == "dead-letter"


async def test_a_give_back_at_shutdown_releases_the_claim_publishes_a_copy_and_acks(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    delivery = FakeDelivery.of(task)
    assert await settler.hand_back(delivery, task)  # type: ignore[arg-type]
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.QUEUED and stored.retry_count == 0  # no attempt spent
    [copy] = publisher.published
    assert copy.message is not None and copy.message.task_id == task.id and copy.message.attempt == 0
    assert delivery.settlement == "ack"


async def test_a_give_back_whose_claim_is_gone_requeues_the_delivery(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    await store.record_cancelled(task.id, attempt=0, node_id=NODE)
    delivery = FakeDelivery.of(task)
    assert not await settler.hand_back(delivery, task)  # type: ignore[arg-type]
    assert delivery.settlement == "requeue" and publisher.published == []


async def test_a_delivery_whose_channel_is_gone_is_not_settled_and_nothing_raises(
    settler: Settler,
) -> None:
    channel = FakeChannel()
    delivery = FakeDelivery(b"{}", channel=channel)
    await channel.close()  # the connection dropped: the broker has the message back
    assert not await settler.ack(delivery)  # type: ignore[arg-type]
    assert not await settler.to_dead_letter_queue(delivery)  # type: ignore[arg-type]
    assert delivery.settlement is None


async def test_a_fake_delivery_refuses_a_second_settlement_as_aio_pika_does() -> None:
    delivery = FakeDelivery(b"{}")
    await delivery.ack()
    with pytest.raises(MessageProcessError):
        await delivery.nack(requeue=False)
    assert delivery.settlement == "ack"


class DownBus:
    """A bus whose every publish meets a store outage."""

    async def publish(self, event: Any, task: Any = None) -> Any:
        raise StoreError("store unavailable (test outage)")


async def test_an_attempt_whose_start_cannot_be_recorded_is_handed_back_unrun(
    store: Any, publisher: FakePublisher, config: WorkerConfig, claimed: NewTask
) -> None:
    recorder = EventRecorder(store, DownBus(), node_id=NODE, store_hold=0.05)  # type: ignore[arg-type]
    settler = Settler(recorder, publisher, config)  # type: ignore[arg-type]
    task = await claimed()
    store.down = True  # no ping answers: an outage, waited out for the (short) hold
    delivery = FakeDelivery.of(task)
    assert not await settler.start(delivery, task)  # type: ignore[arg-type]
    [copy] = publisher.published
    assert copy.headers[HEADER_AWAIT_OWNER] == NODE and delivery.settlement == "ack"


async def test_a_retry_published_but_not_marked_so_is_still_acked_and_left_to_the_relay(
    store: Any, settler: Settler, claimed: NewTask, publisher: FakePublisher
) -> None:
    task = await claimed()
    store.refused.add("mark_published")
    delivery = FakeDelivery.of(task)
    assert await _settle(settler, delivery, task, _raised(Transient("503")))
    stored = await store.get(task.id)
    assert stored.status is TaskStatus.RETRYING and stored.outbox.status is OutboxStatus.PENDING
    assert len(publisher.published) == 1 and delivery.settlement == "ack"
