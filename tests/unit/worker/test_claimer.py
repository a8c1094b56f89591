"""The claimer: which deliveries get to run here, and how the others are settled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.models.message import HEADER_AWAIT_OWNER, HEADER_AWAIT_SINCE, HEADER_DEAD_REASON, AwaitOwner
from taskplatform.testing.broker import FakeDelivery, FakePublisher
from taskplatform.worker.claims import Claimer
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.settlement import Settler
from tests.unit.worker.conftest import NODE

NewTask = Callable[..., Awaitable[BackgroundTask]]


def _claimer(store: Any, settler: Settler, config: WorkerConfig, running: set[Any] | None = None) -> Claimer:
    return Claimer(store, settler, config, running=running if running is not None else set())


async def _held_by(store: Any, task: BackgroundTask, node: str, *, lease_seconds: float) -> None:
    lease = store.now() + timedelta(seconds=lease_seconds)
    assert await store.try_set_running(task.id, attempt=0, node_id=node, lease_until=lease)


async def test_a_queued_task_is_claimed_for_this_node_and_its_delivery_left_unsettled(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    delivery = FakeDelivery.of(task)
    claimed = await _claimer(store, settler, config).claim(delivery, TaskMessage.for_task(task))  # type: ignore[arg-type]
    assert claimed is not None and claimed.status is TaskStatus.RUNNING
    assert claimed.execution_node_id == NODE and claimed.lease_until is not None
    assert delivery.settlement is None  # settled only once the attempt's outcome is stored


async def test_a_duplicate_delivery_of_a_task_another_worker_runs_is_acked_away(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask, publisher: FakePublisher
) -> None:
    task = await new_task()
    await _held_by(store, task, "worker-2", lease_seconds=60)
    duplicate = FakeDelivery.of(task)  # not redelivered: a second copy of a message, not a lost one
    assert await _claimer(store, settler, config).claim(duplicate, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    assert duplicate.settlement == "ack" and publisher.published == []
    current = await store.get(task.id)
    assert current.execution_node_id == "worker-2" and current.status is TaskStatus.RUNNING


async def test_a_delivery_of_a_finished_task_is_acked_without_running(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    first = FakeDelivery.of(task)
    claimer = _claimer(store, settler, config)
    assert await claimer.claim(first, TaskMessage.for_task(task)) is not None  # type: ignore[arg-type]
    await store.record_cancelled(task.id, attempt=0, node_id=NODE)
    again = FakeDelivery.of(task, redelivered=True)
    assert await claimer.claim(again, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    assert again.settlement == "ack"


async def test_a_redelivery_while_the_owner_still_holds_its_lease_waits_outside_for_the_lease(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask, publisher: FakePublisher
) -> None:
    task = await new_task()
    await _held_by(store, task, "worker-2", lease_seconds=60)
    redelivery = FakeDelivery.of(task, redelivered=True)
    assert await _claimer(store, settler, config).claim(redelivery, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    [copy] = publisher.published
    assert copy.kind == "not-before" and copy.headers[HEADER_AWAIT_OWNER] == "worker-2"
    assert copy.not_before is not None and timedelta(seconds=55) < copy.not_before - store.now()
    assert redelivery.settlement == "ack"  # the copy stands in for it: no delivery counted
    assert (await store.get(task.id)).execution_node_id == "worker-2"


async def test_a_redelivery_after_the_owner_died_and_its_lease_lapsed_takes_the_task_over(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    await _held_by(store, task, "worker-2", lease_seconds=-60)  # its owner stopped renewing long ago
    redelivery = FakeDelivery.of(task, redelivered=True)
    claimed = await _claimer(store, settler, config).claim(redelivery, TaskMessage.for_task(task))  # type: ignore[arg-type]
    assert claimed is not None and claimed.execution_node_id == NODE and claimed.retry_count == 0
    assert redelivery.settlement is None


async def test_our_own_claim_whose_reply_was_lost_is_ours_to_run(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    store.lose_reply.add("try_set_running_many")  # committed, but we never saw the answer
    delivery = FakeDelivery.of(task)
    claimed = await _claimer(store, settler, config).claim(delivery, TaskMessage.for_task(task))  # type: ignore[arg-type]
    assert claimed is not None and claimed.id == task.id and delivery.settlement is None
    assert store.calls.count("try_set_running_many") == 2  # the retry lost: the claim was ours
    assert claimed.execution_node_id == NODE and claimed.status is TaskStatus.RUNNING


async def test_a_copy_this_node_handed_back_finds_its_claim_and_runs(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    await _held_by(store, task, NODE, lease_seconds=60)  # the store went away while we held it
    copy = FakeDelivery.of(task, headers={HEADER_AWAIT_OWNER: NODE, HEADER_AWAIT_SINCE: 0})
    tm = TaskMessage.for_task(task)
    await_owner = AwaitOwner.from_headers(copy.headers)
    claimed = await _claimer(store, settler, config).claim(copy, tm, await_owner=await_owner)  # type: ignore[arg-type]
    assert claimed is not None and claimed.id == task.id and copy.settlement is None


async def test_a_duplicate_that_reads_a_claim_of_ours_late_does_not_run_the_attempt_again(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask, publisher: FakePublisher
) -> None:
    # Two copies of one message: the other copy's claim won here; this one's lost, and its read
    # of the task was answered after that attempt had ended and left the running set.
    task = await new_task()
    await _held_by(store, task, NODE, lease_seconds=60)
    duplicate = FakeDelivery.of(task)
    assert await _claimer(store, settler, config).claim(duplicate, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    assert duplicate.settlement == "ack" and publisher.published == []


async def test_a_delivery_of_an_attempt_already_running_here_is_not_claimed_again(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    await _held_by(store, task, NODE, lease_seconds=60)
    claimer = _claimer(store, settler, config, running={(task.id, 0)})
    delivery = FakeDelivery.of(task)
    assert await claimer.claim(delivery, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    assert delivery.settlement == "ack"


async def test_a_store_outage_during_the_claim_hands_a_copy_back_without_counting_a_delivery(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask, publisher: FakePublisher
) -> None:
    task = await new_task()
    store.down = True
    delivery = FakeDelivery.of(task)
    assert await _claimer(store, settler, config).claim(delivery, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    assert store.calls.count("try_set_running_many") > 2  # held and retried through the hold
    [copy] = publisher.published
    assert copy.kind == "task" and copy.headers[HEADER_AWAIT_OWNER] == NODE
    assert delivery.settlement == "ack"  # not a requeue, which would count toward the delivery limit
    store.down = False
    assert (await store.get(task.id)).status is TaskStatus.QUEUED


async def test_a_claim_that_fails_while_the_store_is_briefly_out_is_retried_and_wins(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask, publisher: FakePublisher
) -> None:
    task = await new_task()
    claimer = _claimer(store, settler, config)
    store.down = True
    delivery = FakeDelivery.of(task)
    claiming = asyncio.create_task(claimer.claim(delivery, TaskMessage.for_task(task)))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    store.down = False
    claimed = await claiming
    assert claimed is not None and claimed.execution_node_id == NODE
    assert delivery.settlement is None and publisher.published == []


async def test_a_message_of_a_task_that_died_at_its_attempt_goes_to_the_dead_letter_queue(
    store: Any, settler: Settler, config: WorkerConfig, new_task: NewTask
) -> None:
    task = await new_task()
    await _held_by(store, task, "worker-2", lease_seconds=-60)
    assert await store.mark_dead_letter(task.id, error=None, attempt=0) is not None
    delivery = FakeDelivery.of(task, redelivered=True)
    assert await _claimer(store, settler, config).claim(delivery, TaskMessage.for_task(task)) is None  # type: ignore[arg-type]
    assert delivery.settlement == "dead-letter"


async def test_a_message_naming_no_stored_task_is_dead_lettered_with_its_reason(
    store: Any, settler: Settler, config: WorkerConfig, publisher: FakePublisher
) -> None:
    ghost = BackgroundTask(task_type="unit_echo")  # never stored
    delivery = FakeDelivery.of(ghost)
    assert await _claimer(store, settler, config).claim(delivery, TaskMessage.for_task(ghost)) is None  # type: ignore[arg-type]
    [copy] = publisher.published
    assert (
        copy.kind == "raw" and copy.exchange == "dlx" and copy.headers[HEADER_DEAD_REASON] == "unknown-task"
    )
    assert delivery.settlement == "ack"  # acked once its copy with the reason is confirmed
