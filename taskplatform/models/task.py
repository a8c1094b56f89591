"""The BackgroundTask document: a task's whole life, as stored."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskplatform.models.status import TERMINAL, TaskStatus
from taskplatform.models.target import TaskTarget

JsonObject = dict[str, Any]

MAX_PRIORITY = 9


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of time the platform stores)."""
    return datetime.now(UTC)


def idempotency_scope(user_id: str | None, key: str | None) -> str | None:
    """What the store keeps unique for an idempotency key: the key within its user's scope
    (a SHA-256, so any key fits the index), or None without a key."""
    if key is None:
        return None
    return hashlib.sha256(f"{user_id or ''}\x00{key}".encode()).hexdigest()


def submission_fingerprint(submission: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``submission`` as canonical JSON: keys sorted at every level, no
    whitespace. What a reuse of an idempotency key is compared with, so the same submission
    sent again with its keys in another order is still the same. ``submission`` must be JSON
    data (``model_dump(mode="json")``)."""
    return hashlib.sha256(orjson.dumps(submission, option=orjson.OPT_SORT_KEYS)).hexdigest()


#: Statuses in which a task's work is done: its progress reads complete (100 %).
DONE = frozenset({TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS})


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
    """Counts of a parent's children by status (each child counted once, in its current bucket)."""

    total: int = 0
    queued: int = 0
    running: int = 0
    retrying: int = 0
    completed: int = 0
    completed_with_errors: int = 0
    failed: int = 0
    cancelled: int = 0
    dead_letter: int = 0

    @staticmethod
    def bucket(status: TaskStatus) -> str:
        """The summary field that counts a child in ``status``."""
        return status.value.lower()

    @property
    def finished(self) -> int:
        """Children in a terminal status."""
        return sum(getattr(self, self.bucket(s)) for s in TERMINAL)

    @property
    def pending(self) -> int:
        """Children not finished yet (queued, running or retrying)."""
        return self.total - self.finished

    @property
    def all_succeeded(self) -> bool:
        """Every child completed without errors."""
        return self.completed == self.total


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
    #: Free-form caller data, stored with the task (changeable while it waits, ``PATCH``).
    metadata: JsonObject = Field(default_factory=dict)
    idempotency_key: str | None = None
    #: ``submission_fingerprint`` of the submission that created the task with its idempotency
    #: key (None without a key, and for tasks created before fingerprints were kept).
    idempotency_fingerprint: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    #: Id of the last lifecycle event applied to this document (idempotency by event id).
    last_event_id: str | None = None
    #: A parent whose own execution has finished and that now waits for its children.
    awaiting_children: bool = False
    #: How often an operator replayed the task from the dead letters (its generation).
    replays: int = 0
    #: Where the task may run (None: any worker serving its type); see ``models.target``.
    target: TaskTarget | None = None
    outbox: OutboxState = Field(default_factory=OutboxState)

    @model_validator(mode="after")
    def _progress_as_shown(self) -> BackgroundTask:
        """A parent's progress is its roll-up; a task whose work is done (``DONE``) reads 100 %,
        whatever its executable last reported (progress is throttled, and an executable need not
        report its end). The other reported fields stay as they were."""
        summary = self.sub_task_status_summary
        if summary is not None and summary.total > 0:
            self.progress = {
                "percent": round(100.0 * summary.finished / summary.total, 2),
                "message": f"{summary.finished} of {summary.total} sub-tasks finished",
            }
        if self.status in DONE:
            self.progress = {**(self.progress or {}), "percent": 100.0}
        return self
