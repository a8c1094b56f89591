"""The event-bus observer that turns lifecycle events into metrics.

Events are facts applied by the state aggregator; an observer sees each accepted one with the
task's state after it, and an event it was given before (a producer's retry) is marked and
skipped. Counters are per process: each process counts what it produced (the API its
submissions, a worker its attempts), and Prometheus adds the processes up. Attempts in
progress are counted by the consumer itself, which knows when an attempt ends however it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from taskplatform.events.bus import Published, TaskView
from taskplatform.events.models import (
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskRetrying,
    TaskStarted,
    TaskSubmitted,
)
from taskplatform.metrics.registry import Metrics, reason_label
from taskplatform.models import TERMINAL
from taskplatform.recent import RecentIds

#: Events after which a task may be finished for good.
_FINAL = (TaskCompleted, TaskCancelled, TaskDeadLettered)
#: Tasks whose queue wait this process observed already (a takeover or a give-back starts
#: attempt 0 again); bounded, oldest forgotten first.
_WAITS_REMEMBERED = 100_000


class MetricsObserver:
    """Counts submissions, outcomes, retries and dead letters; times queue waits and task
    durations."""

    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._waited = RecentIds(_WAITS_REMEMBERED)

    async def observe(self, batch: Sequence[Published]) -> None:
        for item in batch:
            if not item.duplicate:
                self._count(item.event, item.task)

    def _count(self, event: TaskEvent, task: TaskView | None) -> None:
        m = self._m
        task_type = task.task_type if task is not None else event.task_type
        if isinstance(event, TaskSubmitted):
            m.tasks_submitted.labels(task_type).inc()
        elif isinstance(event, TaskStarted):
            if event.attempt == 0 and task is not None and task.replays == 0 and self._waited.add(task.id):
                m.task_queue_wait.labels(task_type).observe(_seconds(task.created_at, event.occurred_at))
        elif isinstance(event, TaskRetrying):
            m.task_retries.labels(task_type).inc()
        if isinstance(event, TaskDeadLettered):
            m.dead_letters.labels(task_type, reason_label(event.reason)).inc()
        if isinstance(event, _FINAL) and task is not None and task.status in TERMINAL:
            status = task.status.value
            m.tasks_finished.labels(task_type, status).inc()
            if task.started_at is not None and task.completed_at is not None:
                m.task_duration.labels(task_type, status).observe(
                    _seconds(task.started_at, task.completed_at)
                )


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
