"""The AMQP message that carries a task to a worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models.task import BackgroundTask, utcnow

#: Header names, one place.
HEADER_TASK_ID = "x-task-id"
HEADER_TASK_TYPE = "x-task-type"
HEADER_RETRY_COUNT = "x-retry-count"
HEADER_DELAY = "x-delay"
HEADER_NOT_BEFORE = "x-not-before"  # epoch milliseconds: do not run before
HEADER_DEAD_REASON = "x-dead-reason"
HEADER_DEAD_DETAIL = "x-dead-detail"
HEADER_DEAD_AT = "x-dead-at"  # epoch milliseconds: when the platform dead-lettered it

CONTENT_TYPE = "application/json"
SCHEMA_VERSION = 1


class TaskMessage(BaseModel):
    """Body of a task message. Headers repeat the routing facts (id, type, attempt)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    task_id: str = Field(min_length=1)
    task_type: str = Field(min_length=1)
    attempt: int = Field(default=0, ge=0)
    parameters: dict[str, Any] = Field(default_factory=dict)
    user_id: str | None = None
    parent_task_id: str | None = None
    priority: int = 0
    submitted_at: datetime = Field(default_factory=utcnow)
    #: The task's replay generation (``BackgroundTask.replays``): tells a dead message of an
    #: earlier life of the task from one of its current life.
    generation: int = Field(default=0, ge=0)

    @classmethod
    def for_task(cls, task: BackgroundTask) -> TaskMessage:
        """The message announcing ``task``'s current attempt."""
        return cls(
            task_id=task.id,
            task_type=task.task_type,
            attempt=task.retry_count,
            parameters=task.parameters,
            user_id=task.user_id,
            parent_task_id=task.parent_task_id,
            priority=task.priority,
            submitted_at=task.created_at,
            generation=task.replays,
        )

    @property
    def message_id(self) -> str:
        """Unique per task attempt: a redelivery of the same attempt carries the same id."""
        if self.generation:
            return f"{self.task_id}:r{self.generation}:{self.attempt}"
        return f"{self.task_id}:{self.attempt}"
