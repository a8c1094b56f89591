"""The settler's failure paths: a copy sent round that cannot be published, a dead letter whose
copy cannot be published, a task not marked DEAD_LETTER, and a give-back whose release fails; and
the intake's: an unknown type or a rate-limited delivery while the store cannot answer, and a
not-before header beyond any date."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taskplatform.errors import StoreError
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus, utcnow
from taskplatform.models.message import HEADER_NOT_BEFORE
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing.broker import FakeDelivery, FakePublisher
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.intake import Intake
from taskplatform.worker.settlement import Settler
from tests.unit.worker.conftest import Echo, Params, Result

LOGGER = "taskplatform.worker.settlement"


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


async def test_a_copy_sent_round_that_cannot_be_published_requeues_the_delivery(
    settler: Settler, publisher: FakePublisher, new_task: Any, caplog: pytest.LogCaptureFixture
) -> None:
    task = await new_task()
    delivery = FakeDelivery.of(task)
    publisher.fail()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sent = await settler.send_round(
            delivery,  # type: ignore[arg-type]
            TaskMessage.for_task(task),
            "rate limited",
            not_before=None,
        )
    assert sent is False
    assert delivery.settlement == "requeue" and publisher.published == []
    [record] = _records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"could not send task {task.id} round (")
    assert record.getMessage().endswith("); returning it to the queue")


async def test_a_dead_letter_copy_that_cannot_be_published_rejects_the_original(
    settler: Settler, publisher: FakePublisher, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = FakeDelivery(b"not json", message_id="m-1")
    publisher.fail()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await settler.reject_malformed(delivery, "malformed", "body is not JSON")  # type: ignore[arg-type]
    assert delivery.settlement == "dead-letter" and publisher.published == []
    [failed] = [r for r in _records(caplog) if r.getMessage().startswith("could not publish dead letter")]
    assert failed.levelno == logging.ERROR
    assert failed.getMessage() == (
        "could not publish dead letter with reason (cannot publish: the broker is down (fake)); "
        "rejecting the original"
    )


async def test_a_task_the_store_will_not_mark_dead_letter_still_sends_its_message_to_the_dlq(
    store: Any, settler: Settler, publisher: FakePublisher, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = FakeDelivery(b"{}", message_id="m-2", routing_key="unit_echo")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await settler.dead_letter_task(
            delivery,  # type: ignore[arg-type]
            "no-such-task",
            "unit_echo",
            0,
            "unknown_task_type",
            "no executable for it",
        )
    infos = [r for r in _records(caplog) if "not marked DEAD_LETTER (" in r.getMessage()]
    assert len(infos) == 1 and infos[0].levelno == logging.INFO
    assert infos[0].getMessage().startswith("task no-such-task not marked DEAD_LETTER (")
    [copy] = publisher.published
    assert copy.kind == "raw" and copy.exchange == "dlx"
    assert delivery.settlement == "ack"


async def test_a_give_back_whose_release_meets_a_store_outage_requeues_and_raises(
    store: Any, settler: Settler, publisher: FakePublisher, claimed: Any
) -> None:
    task: BackgroundTask = await claimed()
    delivery = FakeDelivery.of(task)
    store.down = True
    with pytest.raises(StoreError):
        await settler.hand_back(delivery, task)  # type: ignore[arg-type]
    store.down = False
    assert delivery.settlement == "requeue" and publisher.published == []
    assert (await store.get(task.id)).status is TaskStatus.RUNNING  # the claim was not released


# ----------------------------------------------------------------- intake (settles through the settler)
class Limited(BackgroundTaskExecutable[Params, Result]):
    """Rate limited: its deliveries ask the store whether the task still waits."""

    task_type = "unit_limited"
    rate_limits = (RateLimit("1/s"),)

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        return Result(value=0)


def _intake(store: Any, settler: Settler, config: WorkerConfig) -> Intake:
    return Intake(store, settler, ExecutableRegistry((Echo, Limited)), config)


async def test_an_unknown_type_during_a_store_outage_is_a_message_dead_letter_leaving_the_task(
    store: Any, settler: Settler, publisher: FakePublisher, config: WorkerConfig, new_task: Any
) -> None:
    task = await new_task("unit_not_here")
    delivery = FakeDelivery.of(task)
    store.refused.add("get")  # the store cannot say whether the task waits for this message
    assert await _intake(store, settler, config).check(delivery) is None  # type: ignore[arg-type]
    store.refused.clear()
    [copy] = publisher.published
    assert copy.kind == "raw" and copy.exchange == "dlx"
    assert delivery.settlement == "ack"
    assert (await store.get(task.id)).status is TaskStatus.QUEUED  # the task was left alone


async def test_a_not_before_beyond_any_date_is_ignored_and_the_message_goes_on(
    store: Any, settler: Settler, publisher: FakePublisher, config: WorkerConfig, new_task: Any
) -> None:
    task = await new_task()
    delivery = FakeDelivery.of(task, headers={HEADER_NOT_BEFORE: 2**52})  # ~142,000 years ahead
    tm = await _intake(store, settler, config).check(delivery)  # type: ignore[arg-type]
    assert tm is not None and tm.task_id == task.id
    assert delivery.settlement is None and publisher.published == []


async def test_a_rate_limited_delivery_goes_on_to_its_claim_when_the_store_cannot_answer(
    store: Any, settler: Settler, publisher: FakePublisher, config: WorkerConfig, new_task: Any
) -> None:
    task = await new_task("unit_limited")
    delivery = FakeDelivery.of(task)
    tm = TaskMessage.for_task(task)
    store.refused.add("get")
    may_go_on = await _intake(store, settler, config).rate_slot(delivery, tm, utcnow())  # type: ignore[arg-type]
    assert may_go_on is True  # the claim holds it through the outage; no slot was taken
    assert delivery.settlement is None and publisher.published == []
