"""Which dead message is a task's own current one (and may mark it DEAD_LETTER)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskplatform.deadletters.consumer import PARK_CAPTURE_FAILED, PARK_STORE_REFUSED, is_current_message
from taskplatform.metrics.registry import PARK_REASONS
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus, utcnow


def _task(**fields: object) -> BackgroundTask:
    base: dict[str, object] = {
        "task_type": "t",
        "parameters": {},
        "retry_count": 2,
        "replays": 1,
        "priority": 4,
    }
    base.update(fields)
    return BackgroundTask.model_validate(base)


@pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.RETRYING, TaskStatus.FAILED])
def test_the_current_message_of_a_waiting_or_failed_task_is_its_own(status: TaskStatus) -> None:
    task = _task(status=status)
    assert is_current_message(task, TaskMessage.for_task(task))


@pytest.mark.parametrize(
    "change", [{"attempt": 1}, {"generation": 0}, {"priority": 0}, {"task_type": "other"}], ids=str
)
def test_a_message_of_another_attempt_generation_priority_or_type_is_not(change: dict[str, object]) -> None:
    task = _task()
    assert not is_current_message(task, TaskMessage.for_task(task).model_copy(update=change))


def test_a_running_task_is_its_messages_only_once_its_lease_lapsed() -> None:
    live = _task(status=TaskStatus.RUNNING, lease_until=utcnow() + timedelta(seconds=30))
    lapsed = _task(status=TaskStatus.RUNNING, lease_until=utcnow() - timedelta(seconds=1))
    waiting_for_children = _task(status=TaskStatus.RUNNING, lease_until=None, awaiting_children=True)
    assert not is_current_message(live, TaskMessage.for_task(live))
    assert is_current_message(lapsed, TaskMessage.for_task(lapsed))
    assert not is_current_message(waiting_for_children, TaskMessage.for_task(waiting_for_children))


@pytest.mark.parametrize(
    "status",
    [TaskStatus.COMPLETED, TaskStatus.DEAD_LETTER, TaskStatus.CANCELLED, TaskStatus.COMPLETED_WITH_ERRORS],
)
def test_a_finished_task_is_never_marked(status: TaskStatus) -> None:
    task = _task(status=status)
    assert not is_current_message(task, TaskMessage.for_task(task))


def test_every_park_reason_is_a_metric_label_created_at_zero() -> None:
    assert {PARK_STORE_REFUSED, PARK_CAPTURE_FAILED} == set(PARK_REASONS)
