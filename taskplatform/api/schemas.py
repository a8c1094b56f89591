"""API request and response bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from taskplatform.models import BackgroundTask, TaskStatus


class TaskCreated(BaseModel):
    """Answer to a submission."""

    task_id: str
    status: TaskStatus


class TaskCancellation(BaseModel):
    """Answer to a cancel request: CANCELLED at once, or RUNNING with ``cancel_requested``."""

    task_id: str
    status: TaskStatus
    cancel_requested: bool


class TaskList(BaseModel):
    """A page of tasks, newest first."""

    items: list[BackgroundTask]
    next_cursor: str | None = None


class TaskTypeInfo(BaseModel):
    """A registered task type and the JSON Schemas of its parameters and result."""

    task_type: str
    queue: str
    description: str
    parameters_schema: dict[str, Any]
    result_schema: dict[str, Any]


class Health(BaseModel):
    """Liveness."""

    status: str


class QueueFigures(BaseModel):
    """A queue's ready messages and consumers (a passive declare; unacked ones are not known)."""

    ready: int
    consumers: int


class Readiness(BaseModel):
    """Readiness, with each dependency's state, and the work queues' and DLQ's depth when the
    broker answers (null for a queue that does not exist)."""

    status: str
    checks: dict[str, str]
    queues: dict[str, QueueFigures | None] | None = None
