"""Dead letters are counted once each (real RabbitMQ): a task that dies by the metrics observer,
a poison message by the DLQ consumer when it first stores its record; a dead message delivered
again only counts as seen again, in the store and in the counter alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import pytest

from taskplatform.models import TERMINAL
from taskplatform.models.message import HEADER_DEAD_REASON
from taskplatform.runtime import Runtime
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.submission import SubmitRequest
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration

DEAD = "taskplatform_dead_letters_total"


def _dead(runtime: Runtime, task_type: str, reason: str) -> float:
    return runtime.metrics.registry.get_sample_value(DEAD, {"task_type": task_type, "reason": reason}) or 0.0


def _counted_by_reason(runtime: Runtime) -> dict[str, int]:
    counted: dict[str, int] = {}
    for family in runtime.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == DEAD and sample.value:
                reason = sample.labels["reason"]
                counted[reason] = counted.get(reason, 0) + int(sample.value)
    return counted


async def _publish(rabbitmq: Any, exchange_name: str, routing_key: str, message: aio_pika.Message) -> None:
    channel = await rabbitmq.channel(publisher_confirms=True)
    try:
        exchange = (
            channel.default_exchange if exchange_name == "" else await channel.get_exchange(exchange_name)
        )
        await exchange.publish(message, routing_key=routing_key, mandatory=True)
    finally:
        await channel.close()


async def test_poison_messages_and_dead_tasks_are_counted_once_each_as_the_store_records_them(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    worker = make_runtime()
    async with running(worker):
        work, key = worker.topology.work_exchange, worker.topology.routing_key_for("test_noop")
        headers = {"x-task-id": "no-such-task", "x-task-type": "test_noop"}
        for body in (b"{not json", b"{nor this"):  # two malformed messages
            await _publish(rabbitmq, work, key, aio_pika.Message(body, headers=headers))
        [dead_task] = await worker.submitter.submit_many([SubmitRequest(task_type="test_boom")])
        # one foreign dead message, delivered to the DLQ twice (its message id kept, as a
        # redelivery keeps it): the same death seen again
        foreign = {HEADER_DEAD_REASON: "made-up-by-someone", "x-task-type": "not-ours"}
        for _ in range(2):
            await _publish(
                rabbitmq,
                "",
                worker.topology.dead_letter_queue,
                aio_pika.Message(b"\x00\xff", headers=foreign, message_id="foreign-1"),
            )

        async def settled() -> bool:
            task = await worker.store.get(dead_task.task.id)
            records = await worker.store.count_dead_letters(DeadLetterFilter())
            return task is not None and task.status in TERMINAL and records.total == 4

        await eventually(settled, timeout=30)
        await eventually(lambda: _async(sum(_counted_by_reason(worker).values()) == 4), timeout=10)
        counts = await worker.store.count_dead_letters(DeadLetterFilter())
    assert _dead(worker, "test_noop", "bad-json") == 2  # counted though no task died with them
    assert _dead(worker, "test_boom", "non-retryable") == 1  # by the observer; its dead message not again
    assert _dead(worker, "unknown", "other") == 1  # a foreign type and reason mint no series
    assert _counted_by_reason(worker) == {"bad-json": 2, "non-retryable": 1, "other": 1}
    assert counts.by_reason == {"bad-json": 2, "non-retryable": 1, "made-up-by-someone": 1}


async def _async(value: bool) -> bool:
    return value
