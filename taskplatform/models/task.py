"""The BackgroundTask document: a task's whole life, as stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models.status import TaskStatus

JsonObject = dict[str, Any]

MAX_PRIORITY = 9


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of time the platform stores)."""
    return datetime.now(UTC)


def new_task_id() -> str:
    """A fresh task id (UUID4, hex with dashes)."""
    return str(uuid.uuid4())


class ErrorInfo(BaseModel):
    """What went wrong in an attempt."""

    model_config = ConfigDict(extra="ignore")

    type: str
    message: str
    traceback: str | None = None
    attempt: int = 0
    node_id: str | None = None
    reason: str | None = None
    occurred_at: datetime = Field(default_factory=utcnow)


class SubTaskStatusSummary(BaseModel):
    """Counts of a parent's children by status."""

    total: int = 0
    queued: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    dead_letter: int = 0


class OutboxStatus(str, Enum):
    """Whether the task's message still has to be published."""

    PENDING = "pending"
    PUBLISHED = "published"


class OutboxState(BaseModel):
    """Publish state of the task's message (the transactional outbox)."""

    status: OutboxStatus = OutboxStatus.PENDING
    attempts: int = 0
    lease_until: datetime | None = None
    lease_owner: str | None = None
    published_at: datetime | None = None
    last_error: str | None = None


class BackgroundTask(BaseModel):
    """One task, as the store keeps it."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_task_id)
    user_id: str | None = None
    task_type: str
    status: TaskStatus = TaskStatus.QUEUED
    parameters: JsonObject = Field(default_factory=dict)
    progress: JsonObject | None = None
    result: JsonObject | None = None
    error_info: ErrorInfo | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_count: int = 0
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    execution_node_id: str | None = None
    parent_task_id: str | None = None
    sub_task_status_summary: SubTaskStatusSummary | None = None
    version: int = 1
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)
    tags: list[str] = Field(default_factory=list)
    idempotency_key: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    outbox: OutboxState = Field(default_factory=OutboxState)
