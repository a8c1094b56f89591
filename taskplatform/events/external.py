"""The external lifecycle event: the public, versioned contract on the events exchange.

Internal events (``taskplatform.events.models``) are free to change; this model is what
other systems consume. Its JSON Schema is generated from it (``python -m
taskplatform.events.schema``) and committed under ``docs/events/``, so a change to this
module that alters the contract shows up as a schema diff in review.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from taskplatform.events.bus import Published, TaskView
from taskplatform.events.models import (
    EventType,
    Origin,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskSubmitted,
    TaskWaiting,
)
from taskplatform.models import ErrorInfo, SubTaskStatusSummary, TaskStatus

SCHEMA_VERSION: Literal["1"] = "1"
#: A completed event carries the whole result up to this size (its JSON, in bytes).
RESULT_SUMMARY_MAX_BYTES = 4096
#: A truncated result summary lists at most this many of the result's top-level keys.
RESULT_SUMMARY_MAX_KEYS = 100
ERROR_MESSAGE_MAX_CHARS = 500

#: The status a task has after an event, when the event comes without the task's state.
_STATUS_AFTER: dict[EventType, TaskStatus] = {
    EventType.SUBMITTED: TaskStatus.QUEUED,
    EventType.STARTED: TaskStatus.RUNNING,
    EventType.PROGRESS: TaskStatus.RUNNING,
    EventType.WAITING: TaskStatus.RUNNING,
    EventType.RETRYING: TaskStatus.RETRYING,
    EventType.REQUEUED: TaskStatus.QUEUED,
    EventType.COMPLETED: TaskStatus.COMPLETED,
    EventType.FAILED: TaskStatus.FAILED,
    EventType.DEAD_LETTERED: TaskStatus.DEAD_LETTER,
    EventType.CANCELLED: TaskStatus.CANCELLED,
    EventType.REPLAYED: TaskStatus.QUEUED,
}


# Field docstrings become schema descriptions; every key is always present in the JSON.
_CONFIG = ConfigDict(
    frozen=True, use_attribute_docstrings=True, json_schema_serialization_defaults_required=True
)


class TaskSnapshot(BaseModel):
    """The task as it is after the event."""

    model_config = _CONFIG

    id: str
    """Task id."""
    type: str
    """Task type (the executable's name)."""
    status: TaskStatus
    """Status after the event."""
    user_id: str | None = None
    """The user who submitted the task, if known."""
    parent_task_id: str | None = None
    """The parent's id when this task is a sub-task."""
    attempt: int = 0
    """Attempt counter after the event (0 = the first attempt; a retry increments it)."""
    priority: int | None = None
    """Priority 0-9 (9 runs first); null when the event came without the task's state."""
    tags: list[str] = Field(default_factory=list)
    """Free-form labels given at submission."""
    created_at: datetime | None = None
    """When the task was submitted."""
    started_at: datetime | None = None
    """When its current or last attempt started."""
    completed_at: datetime | None = None
    """When it reached a terminal status."""
    next_attempt_at: datetime | None = None
    """When a retrying task runs again."""


class ProgressSummary(BaseModel):
    """Progress as reported by the executable, or a parent's roll-up over its sub-tasks."""

    model_config = ConfigDict(**_CONFIG, extra="allow")

    percent: float | None = None
    """0-100, when the executable reports one."""
    message: str | None = None
    """Human-readable progress text."""


class TruncatedResult(BaseModel):
    """Stands in for a result whose JSON is larger than 4 KiB; fetch it from the task API."""

    model_config = _CONFIG

    truncated: Literal[True] = True
    """Always true: marks this object as a stand-in, not the result."""
    size_bytes: int
    """Size of the result's JSON in bytes."""
    keys: list[str]
    """The result's top-level keys (at most 100)."""


class ErrorSummary(BaseModel):
    """What went wrong, without the traceback."""

    model_config = _CONFIG

    type: str
    """Exception type name (or a platform reason such as DeadLettered)."""
    message: str = Field(max_length=ERROR_MESSAGE_MAX_CHARS)
    """Error message, cut to 500 characters."""
    reason: str | None = None
    """Machine-readable reason, e.g. timeout, max-retries-exceeded, delivery-limit."""
    attempt: int = 0
    """The attempt that failed."""


class SubTaskCounts(BaseModel):
    """A parent's children counted by current status (each child in one bucket)."""

    model_config = ConfigDict(**_CONFIG, extra="ignore")

    total: int = 0
    """Children submitted."""
    queued: int = 0
    """Waiting to run."""
    running: int = 0
    """Running now."""
    retrying: int = 0
    """Waiting for another attempt."""
    completed: int = 0
    """Completed."""
    completed_with_errors: int = 0
    """Completed, with some of their own sub-tasks failed."""
    failed: int = 0
    """Failed for good."""
    cancelled: int = 0
    """Cancelled."""
    dead_letter: int = 0
    """Moved to the dead-letter queue."""


class Producer(BaseModel):
    """Who produced the event."""

    model_config = _CONFIG

    node_id: str | None = None
    """The node (worker or API process) that produced it."""
    origin: Origin
    """The kind of producer: api, worker, reaper, children (a roll-up) or platform."""


class ExternalTaskEvent(BaseModel):
    """One lifecycle event of one task, as published to the events exchange."""

    model_config = _CONFIG

    schema_version: Literal["1"] = SCHEMA_VERSION
    """Version of this format; additive changes keep it, breaking ones bump it."""
    event_id: str
    """Unique id of the event; redeliveries and retried publishes repeat it (dedupe on it)."""
    type: EventType
    """What happened; also the last word of the routing key."""
    routing_key: str
    """task.<task type>.<event type>, as published."""
    occurred_at: datetime
    """When it happened (UTC)."""
    sequence: int | None = None
    """The task's store version after the event: orders one task's events across producers
    (higher is later); null when the producer did not have the task's state."""
    task: TaskSnapshot
    """The task after the event."""
    progress: ProgressSummary | None = None
    """Progress and waiting events, and any event of a parent (its sub-task roll-up)."""
    result_summary: TruncatedResult | dict[str, Any] | None = None
    """Completed events: the result when its JSON is at most 4 KiB, else a TruncatedResult."""
    error: ErrorSummary | None = None
    """Retrying, failed and dead-lettered events: what went wrong."""
    sub_tasks: SubTaskCounts | None = None
    """A parent's children by status."""
    producer: Producer
    """Who produced the event."""


def routing_key_for(task_type: str, event_type: EventType | str) -> str:
    """``task.<task_type>.<event>``, e.g. ``task.generate_summary.completed``.

    Raises:
        ValueError: ``event_type`` is not an EventType value.
    """
    return f"task.{task_type}.{EventType(event_type).value}"


def to_external(published: Published) -> ExternalTaskEvent:
    """The external event for an accepted internal event and the task's state after it.

    Uses the event's own fields where ``published.task`` is None.
    """
    event, task = published.event, published.task
    return ExternalTaskEvent(
        event_id=event.event_id,
        type=event.type,
        routing_key=routing_key_for(event.task_type, event.type),
        occurred_at=event.occurred_at,
        sequence=task.version if task is not None else None,
        task=_snapshot(event, task),
        progress=_progress(event, task),
        result_summary=_result_summary(event, task),
        error=_error(event, task),
        sub_tasks=_sub_tasks(task.sub_task_status_summary if task is not None else None),
        producer=Producer(node_id=event.node_id, origin=event.origin),
    )


def _snapshot(event: TaskEvent, task: TaskView | None) -> TaskSnapshot:
    if task is not None:
        return TaskSnapshot(
            id=task.id,
            type=task.task_type,
            status=task.status,
            user_id=task.user_id,
            parent_task_id=task.parent_task_id,
            attempt=task.retry_count,
            priority=task.priority,
            tags=list(task.tags),
            created_at=task.created_at,
            started_at=task.started_at,
            completed_at=task.completed_at,
            next_attempt_at=task.next_attempt_at,
        )
    status = event.status if isinstance(event, TaskCompleted) else _STATUS_AFTER[event.type]
    return TaskSnapshot(
        id=event.task_id,
        type=event.task_type,
        status=status,
        parent_task_id=event.parent_task_id if isinstance(event, TaskSubmitted) else None,
        attempt=event.attempt,
        started_at=event.occurred_at if event.type is EventType.STARTED else None,
        completed_at=event.occurred_at if event.type is EventType.COMPLETED else None,
        next_attempt_at=event.next_attempt_at if isinstance(event, TaskRetrying) else None,
    )


def _progress(event: TaskEvent, task: TaskView | None) -> ProgressSummary | None:
    raw: dict[str, Any] | None = None
    if isinstance(event, TaskProgress):
        raw = event.progress
    elif isinstance(event, TaskWaiting) or _is_parent(task):
        raw = task.progress if task is not None else None
        if raw is None and isinstance(event, TaskWaiting):
            raw = {"message": f"waiting for {event.children} sub-task(s)"}
    if raw is None:
        return None
    fields = _json_safe(raw)
    if not isinstance(fields, dict):
        return None
    # Executables report free-form progress; keep the typed keys typed, never fail on them.
    percent = fields.pop("percent", None)
    message = fields.pop("message", None)
    fields["percent"] = _number(percent)
    fields["message"] = None if message is None else str(message)
    return ProgressSummary.model_validate(fields)


def _is_parent(task: TaskView | None) -> bool:
    summary = task.sub_task_status_summary if task is not None else None
    return summary is not None and summary.total > 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _result_summary(event: TaskEvent, task: TaskView | None) -> TruncatedResult | dict[str, Any] | None:
    if not isinstance(event, TaskCompleted):
        return None
    # Roll-up completions carry no result of their own: the parent's stored one stands.
    result = event.result if event.result is not None else (task.result if task is not None else None)
    if result is None:
        return None
    raw = to_json(result, serialize_unknown=True)
    if len(raw) <= RESULT_SUMMARY_MAX_BYTES:
        loaded: dict[str, Any] = orjson.loads(raw)
        return loaded
    return TruncatedResult(size_bytes=len(raw), keys=[str(k) for k in list(result)[:RESULT_SUMMARY_MAX_KEYS]])


def _error(event: TaskEvent, task: TaskView | None) -> ErrorSummary | None:
    if isinstance(event, TaskRetrying | TaskFailed):
        return _error_summary(event.error, event.error.reason)
    if not isinstance(event, TaskDeadLettered):
        return None
    info = event.error or (task.error_info if task is not None else None)
    if info is None:
        return ErrorSummary(
            type="DeadLettered", message=_cut(event.reason), reason=event.reason, attempt=event.attempt
        )
    return _error_summary(info, event.reason)


def _error_summary(info: ErrorInfo, reason: str | None) -> ErrorSummary:
    return ErrorSummary(type=info.type, message=_cut(info.message), reason=reason, attempt=info.attempt)


def _sub_tasks(summary: SubTaskStatusSummary | None) -> SubTaskCounts | None:
    return None if summary is None else SubTaskCounts.model_validate(summary.model_dump())


def _cut(text: str) -> str:
    if len(text) <= ERROR_MESSAGE_MAX_CHARS:
        return text
    return text[: ERROR_MESSAGE_MAX_CHARS - 1] + "…"


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (unknown types become strings), so publishing cannot fail."""
    return orjson.loads(to_json(value, serialize_unknown=True))
