"""Lifecycle events: every state change of a task is one of these.

Events are facts as their producer sees them ("worker n finished attempt a with result r").
The state aggregator applies each one to the store as a conditional update; an event whose
update does not apply (the task moved on) is rejected and goes no further.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models import ErrorInfo, TaskStatus, utcnow


def new_event_id() -> str:
    """A fresh, unique event id."""
    return uuid.uuid4().hex


class EventType(str, Enum):
    """Short event names; also the last part of the external routing key."""

    SUBMITTED = "submitted"
    STARTED = "started"
    PROGRESS = "progress"
    WAITING = "waiting"
    RETRYING = "retrying"
    REQUEUED = "requeued"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    REPLAYED = "replayed"


class Origin(str, Enum):
    """Who produced the event; decides which guard its store update uses."""

    API = "api"  # a submission or an operator's request
    WORKER = "worker"  # the owner of the attempt
    REAPER = "reaper"  # a worker vanished; its lapsed attempt is settled for it
    CHILDREN = "children"  # a parent's children all finished (roll-up)
    PLATFORM = "platform"  # anything else: poison messages, cascades, the DLQ


class TaskEvent(BaseModel):
    """Common fields of every lifecycle event."""

    model_config = ConfigDict(frozen=True)

    type: ClassVar[EventType]

    event_id: str = Field(default_factory=new_event_id)
    task_id: str
    task_type: str
    occurred_at: datetime = Field(default_factory=utcnow)
    origin: Origin = Origin.WORKER
    #: The attempt the event belongs to (the task's retry_count when it happened).
    attempt: int = 0
    #: The node that produced it (the attempt's owner for worker events).
    node_id: str | None = None

    @property
    def name(self) -> str:
        return self.type.value


class TaskSubmitted(TaskEvent):
    """A task was stored (and its message published or left in the outbox)."""

    type: ClassVar[EventType] = EventType.SUBMITTED
    parent_task_id: str | None = None


class TaskStarted(TaskEvent):
    """A worker claimed an attempt and runs it (also after taking over a lapsed one)."""

    type: ClassVar[EventType] = EventType.STARTED


class TaskProgress(TaskEvent):
    """The executable reported progress."""

    type: ClassVar[EventType] = EventType.PROGRESS
    progress: dict[str, Any]


class TaskWaiting(TaskEvent):
    """A parent's own execution finished; it now waits for its children."""

    type: ClassVar[EventType] = EventType.WAITING
    result: dict[str, Any] | None = None
    children: int = 0


class TaskRetrying(TaskEvent):
    """An attempt failed with attempts left; the next one runs at ``next_attempt_at``."""

    type: ClassVar[EventType] = EventType.RETRYING
    error: ErrorInfo
    delay_seconds: float
    next_attempt_at: datetime
    #: Reaper events: the attempt's lease had to end before this for the reap to apply.
    lapsed_before: datetime | None = None
    #: Worker events: until then the outbox leaves publishing the retry to its producer.
    outbox_hold_until: datetime | None = None


class TaskRequeued(TaskEvent):
    """A worker gave an unfinished attempt back (shutdown); it runs again at once."""

    type: ClassVar[EventType] = EventType.REQUEUED


class TaskCompleted(TaskEvent):
    """The task finished. Worker events carry the result; roll-up events the final status."""

    type: ClassVar[EventType] = EventType.COMPLETED
    result: dict[str, Any] | None = None
    #: The attempt's last progress, when it reported some not yet written.
    progress: dict[str, Any] | None = None
    status: Literal[TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS] = TaskStatus.COMPLETED
    #: Roll-up events: the parent's version the decision was made on (compare-and-set).
    expected_version: int | None = None


class TaskFailed(TaskEvent):
    """An attempt failed for good (not retryable, or out of attempts)."""

    type: ClassVar[EventType] = EventType.FAILED
    error: ErrorInfo
    lapsed_before: datetime | None = None


class TaskDeadLettered(TaskEvent):
    """The task was moved to the dead-letter queue."""

    type: ClassVar[EventType] = EventType.DEAD_LETTERED
    reason: str
    error: ErrorInfo | None = None


class TaskCancelled(TaskEvent):
    """The task was cancelled (before it ran, while waiting for children, or stopped)."""

    type: ClassVar[EventType] = EventType.CANCELLED


class TaskReplayed(TaskEvent):
    """An operator sent a dead task back to the queue (its attempts start over)."""

    type: ClassVar[EventType] = EventType.REPLAYED
    #: The task's replay generation before this replay (compare-and-set).
    expected_replays: int = 0
    #: Replacement parameters, already validated against the executable's Params.
    parameters: dict[str, Any] | None = None
    dead_letter_id: str | None = None
    actor: str | None = None


EVENT_CLASSES: tuple[type[TaskEvent], ...] = (
    TaskSubmitted,
    TaskStarted,
    TaskProgress,
    TaskWaiting,
    TaskRetrying,
    TaskRequeued,
    TaskCompleted,
    TaskFailed,
    TaskDeadLettered,
    TaskCancelled,
    TaskReplayed,
)
