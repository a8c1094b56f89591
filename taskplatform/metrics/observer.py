"""The event-bus observer that turns lifecycle events into metrics.

Events are facts applied by the state aggregator; an observer sees each accepted one once
(duplicates, a producer's retry of an applied event, are marked and skipped), with the task's
state after it. Counters are per process: each process counts what it produced (the API its
submissions, a worker its attempts), and Prometheus adds the processes up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from taskplatform.events.bus import Published
from taskplatform.events.models import (
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskRequeued,
    TaskRetrying,
    TaskStarted,
    TaskSubmitted,
    TaskWaiting,
)
from taskplatform.metrics.registry import Metrics
from taskplatform.models import TERMINAL, BackgroundTask

#: Events that end an attempt that ran in the process that publishes them.
_ATTEMPT_ENDS = (TaskCompleted, TaskRetrying, TaskFailed, TaskCancelled, TaskWaiting, TaskRequeued)
#: Events after which a task may be finished for good.
_FINAL = (TaskCompleted, TaskCancelled, TaskDeadLettered)


class MetricsObserver:
    """Counts submissions, starts, outcomes, retries and dead letters; times queue waits and
    task durations; tracks the attempts running in this process."""

    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        #: Attempts started in this process and not ended yet: (task id, attempt) -> task type.
        self._running: dict[tuple[str, int], str] = {}

    async def observe(self, batch: Sequence[Published]) -> None:
        for item in batch:
            if not item.duplicate:
                self._count(item.event, item.task)

    def _count(self, event: TaskEvent, task: BackgroundTask | None) -> None:
        m, task_type = self._m, event.task_type
        if isinstance(event, TaskSubmitted):
            m.tasks_submitted.labels(task_type).inc()
        elif isinstance(event, TaskStarted):
            self._running[(event.task_id, event.attempt)] = task_type
            m.tasks_in_progress.labels(task_type).inc()
            if event.attempt == 0 and task is not None and task.replays == 0:
                m.task_queue_wait.labels(task_type).observe(_seconds(task.created_at, event.occurred_at))
        if isinstance(event, _ATTEMPT_ENDS):
            if self._running.pop((event.task_id, event.attempt), None) is not None:
                m.tasks_in_progress.labels(task_type).dec()
        if isinstance(event, TaskRetrying):
            m.task_retries.labels(task_type).inc()
        elif isinstance(event, TaskDeadLettered):
            m.dead_letters.labels(task_type, event.reason or "unknown").inc()
        if isinstance(event, _FINAL) and task is not None and task.status in TERMINAL:
            m.tasks_finished.labels(task_type, task.status.value).inc()
            if task.started_at is not None and task.completed_at is not None:
                m.task_duration.labels(task_type).observe(_seconds(task.started_at, task.completed_at))


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
