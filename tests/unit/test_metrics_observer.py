"""The metrics observer and the Metrics container on their own: what each lifecycle event
counts, and how label values stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from taskplatform.events import (
    Published,
    TaskCompleted,
    TaskDeadLettered,
    TaskStarted,
    TaskSubmitted,
    TaskView,
)
from taskplatform.metrics import sampler as sampler_module
from taskplatform.metrics.observer import MetricsObserver
from taskplatform.metrics.registry import Metrics, method_label, reason_label
from taskplatform.metrics.sampler import BacklogSampler
from taskplatform.models import BackgroundTask, TaskStatus, utcnow


def _metrics() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry), registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_an_event_marked_duplicate_is_not_counted_again() -> None:
    metrics, registry = _metrics()
    observer = MetricsObserver(metrics)
    task = BackgroundTask(task_type="t")
    event = TaskSubmitted(task_id=task.id, task_type="t")
    await observer.observe(
        [Published(event, TaskView.of(task)), Published(event, TaskView.of(task), duplicate=True)]
    )
    assert _value(registry, "taskplatform_tasks_submitted_total", task_type="t") == 1


async def test_a_finished_task_is_counted_and_timed_by_its_final_status() -> None:
    metrics, registry = _metrics()
    observer = MetricsObserver(metrics)
    started = utcnow()
    ran = {"started_at": started, "task_type": "t"}
    done = BackgroundTask(status=TaskStatus.COMPLETED, completed_at=started + timedelta(seconds=2), **ran)
    dead = BackgroundTask(status=TaskStatus.DEAD_LETTER, completed_at=started + timedelta(seconds=1), **ran)
    foreign = "x-from-a-foreign-header"
    await observer.observe(
        [
            Published(TaskCompleted(task_id=done.id, task_type="t"), TaskView.of(done)),
            Published(TaskDeadLettered(task_id=dead.id, task_type="t", reason=foreign), TaskView.of(dead)),
        ]
    )
    finished, duration = "taskplatform_tasks_finished_total", "taskplatform_task_duration_seconds"
    assert _value(registry, finished, task_type="t", status="COMPLETED") == 1
    assert _value(registry, finished, task_type="t", status="DEAD_LETTER") == 1
    assert _value(registry, f"{duration}_sum", task_type="t", status="COMPLETED") == 2
    assert _value(registry, f"{duration}_count", task_type="t", status="DEAD_LETTER") == 1
    # a reason the platform does not know becomes "other": a message cannot mint new series
    assert _value(registry, "taskplatform_dead_letters_total", task_type="t", reason="other") == 1


async def test_the_queue_wait_is_observed_once_per_task() -> None:
    metrics, registry = _metrics()
    observer = MetricsObserver(metrics)
    task = BackgroundTask(task_type="t", status=TaskStatus.RUNNING)
    first = TaskStarted(task_id=task.id, task_type="t", attempt=0)
    again = TaskStarted(task_id=task.id, task_type="t", attempt=0)  # a takeover starts attempt 0 anew
    await observer.observe([Published(first, TaskView.of(task)), Published(again, TaskView.of(task))])
    assert _value(registry, "taskplatform_task_queue_wait_seconds_count", task_type="t") == 1


def test_known_task_types_start_at_zero_and_labels_stay_bounded() -> None:
    metrics, registry = _metrics()
    metrics.prepare(["t"])
    cancelled = {"task_type": "t", "status": "CANCELLED"}
    assert registry.get_sample_value("taskplatform_tasks_finished_total", cancelled) == 0  # not None
    assert registry.get_sample_value("taskplatform_tasks_submitted_total", {"task_type": "t"}) == 0
    assert reason_label("attempts-exhausted") == "attempts-exhausted"
    assert reason_label(None) == "other"
    assert method_label("PATCH") == "PATCH"
    assert method_label("PROPFIND") == "OTHER"


async def test_the_heartbeat_beats_while_the_store_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    class HangingStore:
        async def backlog(self) -> None:
            await asyncio.Event().wait()  # a partitioned store: no answer, no error

    monkeypatch.setattr(sampler_module, "HEARTBEAT_SECONDS", 0.05)
    metrics, registry = _metrics()
    sampler = BacklogSampler(HangingStore(), metrics, interval=60)  # type: ignore[arg-type]
    running = asyncio.create_task(sampler.run(asyncio.Event()))
    await asyncio.sleep(0.1)
    first = _value(registry, "taskplatform_heartbeat_timestamp_seconds")
    await asyncio.sleep(0.3)
    later = _value(registry, "taskplatform_heartbeat_timestamp_seconds")
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert first > 0 and later - first >= 0.2  # it kept beating though the sample never finished
