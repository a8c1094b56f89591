"""The attempt record an event ends an attempt with (``taskplatform.models.attempt``).

An attempt ends when its worker records its outcome (completed, waiting for its sub-tasks,
failed and retried or not, cancelled, given back) or when the reaper settles it after its
worker vanished (lost). Other events (submission, start, progress, a cancel or dead-lettering
of a waiting task, a replay, a parent finished by its children) end no attempt.
"""

from __future__ import annotations

from taskplatform.events.models import (
    Origin,
    TaskCancelled,
    TaskCompleted,
    TaskEvent,
    TaskFailed,
    TaskRequeued,
    TaskRetrying,
    TaskWaiting,
)
from taskplatform.models import BackgroundTask, ErrorInfo
from taskplatform.models.attempt import ERROR_MESSAGE_LIMIT, AttemptOutcome, AttemptRecord
from taskplatform.store.history import cut_text

#: The error types of an attempt stopped by a time-out: its own (``asyncio.timeout``), or a
#: command's (``run_command``).
TIMEOUT_ERRORS = frozenset({"TimeoutError", "CommandTimedOut"})


def _outcome(event: TaskEvent) -> tuple[AttemptOutcome, ErrorInfo | None] | None:
    if isinstance(event, TaskCompleted):
        return (AttemptOutcome.COMPLETED, None) if event.origin is not Origin.CHILDREN else None
    if isinstance(event, TaskWaiting):
        return AttemptOutcome.WAITING_FOR_CHILDREN, None
    if isinstance(event, TaskRetrying | TaskFailed):
        if event.origin is Origin.REAPER:
            return AttemptOutcome.LOST, event.error
        timed_out = event.error.type in TIMEOUT_ERRORS
        return (AttemptOutcome.TIMED_OUT if timed_out else AttemptOutcome.FAILED), event.error
    if isinstance(event, TaskCancelled):
        return (AttemptOutcome.CANCELLED, None) if event.origin is Origin.WORKER else None
    if isinstance(event, TaskRequeued):
        return AttemptOutcome.GIVEN_BACK, None
    return None


def attempt_record(
    event: TaskEvent,
    during: BackgroundTask | None,
    after: BackgroundTask,
    *,
    node_id: str,
    host: str | None,
) -> AttemptRecord | None:
    """The record of the attempt ``event`` ended, or None when it ends none. ``during``: the
    task as it was while the attempt ran (the producer's copy), ``after``: as the event left it.
    ``node_id``/``host``: this process's, the host named when the attempt ran here."""
    ended = _outcome(event)
    if ended is None:
        return None
    outcome, error = ended
    ran = during if during is not None and during.id == event.task_id else after
    # The reaper's events name the reaper's node; the attempt ran on the owner of the lease.
    node = ran.execution_node_id
    if event.origin is not Origin.REAPER and event.node_id:
        node = event.node_id
    started = ran.started_at
    duration = (event.occurred_at - started).total_seconds() if started is not None else None
    return AttemptRecord(
        id=event.event_id,
        task_id=event.task_id,
        generation=ran.replays,
        attempt=event.attempt,
        node_id=cut_text(node, 255),
        host=cut_text(host, 255) if node == node_id else None,
        started_at=started,
        ended_at=event.occurred_at,
        duration_seconds=max(0.0, duration) if duration is not None else None,
        outcome=outcome,
        error_type=cut_text(error.type, 255) if error is not None else None,
        error_message=cut_text(error.message, ERROR_MESSAGE_LIMIT) if error is not None else None,
        retried=isinstance(event, TaskRetrying),
    )
