"""Plain data the store API speaks: filters, pages and cursors, requests, guards."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models import BackgroundTask, SubTaskStatusSummary, TaskStatus
from taskplatform.models.attempt import AttemptRecord

MAX_PAGE_SIZE = 500


class TaskFilter(BaseModel):
    """List filters; every given field must match. ``tags``: the task carries all of them."""

    model_config = ConfigDict(frozen=True)

    status: TaskStatus | None = None
    task_type: str | None = None
    user_id: str | None = None
    parent_task_id: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    #: Aimed at this worker node (``target.node``), or run there (``execution_node_id``).
    node: str | None = None


#: The TaskFilter fields matched by equality with the document field of the same name.
EQUALITY_FILTERS = ("task_type", "user_id", "parent_task_id", "priority")


class TaskPage(BaseModel):
    """One page of a listing, newest first; ``next_cursor`` is None on the last page."""

    items: list[BackgroundTask] = Field(default_factory=list)
    next_cursor: str | None = None


def check_page_size(limit: int) -> int:
    """Validate a page size (1..MAX_PAGE_SIZE)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


class InvalidCursorError(ValueError):
    """A pagination cursor that this store did not produce."""


def encode_cursor(created_at: datetime, task_id: str) -> str:
    """An opaque cursor pointing just after (created_at, id) in newest-first order."""
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; raises InvalidCursorError on anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, task_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        when = datetime.fromisoformat(stamp)
        # A time every backend can compare: in UTC (an offset may push it out of range).
        when = when.astimezone(UTC) if when.tzinfo is not None else when
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursorError(f"invalid cursor {cursor!r}") from exc
    # Ids are text without NUL (PostgreSQL refuses it): no cursor this store made holds one.
    if when.tzinfo is None or not task_id or "\x00" in task_id:
        raise InvalidCursorError(f"invalid cursor {cursor!r}")
    return when, task_id


@dataclass(frozen=True)
class Backlog:
    """What waits: messages still to publish (and when the oldest of them was submitted), and
    when the oldest QUEUED task was submitted."""

    outbox_pending: int
    oldest_queued_at: datetime | None
    oldest_pending_at: datetime | None


@dataclass(frozen=True)
class ClaimRequest:
    """Claim ``task_id`` for ``attempt`` (see ``try_set_running``), only while the task still has
    ``priority`` (a message from before a priority change loses) and, when given, is of
    ``task_type`` in replay ``generation`` (a message naming a task it does not belong to never
    claims it)."""

    task_id: str
    attempt: int
    priority: int
    task_type: str | None = None
    generation: int | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """Record ``result`` as the outcome of ``task_id``'s ``attempt`` (and ``event_id`` as the
    document's ``last_event_id`` when given)."""

    task_id: str
    attempt: int
    result: Mapping[str, Any] | None
    event_id: str | None = None
    #: The attempt's last progress, written with the completion (None keeps what is stored).
    progress: Mapping[str, Any] | None = None
    #: The attempt's history record, written with the completion when it is recorded (in the
    #: same statement on PostgreSQL, on the same connection on SQLite).
    attempt_record: AttemptRecord | None = None


@dataclass(frozen=True)
class Guard:
    """The condition a guarded update requires of the current document.

    The document must be in one of ``statuses`` and match every ``equals`` field, or,
    when ``takeover_before`` is set, be RUNNING with ``lease_until`` earlier than it
    (and still match ``equals``): the previous owner's lease has lapsed.
    """

    statuses: frozenset[TaskStatus]
    equals: Mapping[str, Any] = field(default_factory=dict)
    takeover_before: datetime | None = None


#: The parent fields a roll-up reads and returns (never its parameters, result or ledger,
#: which grow with the batch).
PARENT_FIELDS = (
    "id",
    "task_type",
    "status",
    "version",
    "retry_count",
    "awaiting_children",
    "cancel_requested",
    "sub_task_status_summary",
)


@dataclass(frozen=True)
class ParentState:
    """What a roll-up returns of the parent: enough to decide whether it can finish."""

    id: str
    task_type: str
    status: TaskStatus
    version: int
    retry_count: int
    awaiting_children: bool
    cancel_requested: bool
    sub_task_status_summary: SubTaskStatusSummary | None

    @classmethod
    def of(cls, task: BackgroundTask) -> ParentState:
        """The parent state of a full document."""
        return cls(**{name: getattr(task, name) for name in PARENT_FIELDS})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ParentState:
        """From stored values (status as text, summary as a JSON object or None)."""
        summary = data.get("sub_task_status_summary")
        return cls(
            id=str(data["id"]),
            task_type=str(data["task_type"]),
            status=TaskStatus(data["status"]),
            version=int(data["version"]),
            retry_count=int(data.get("retry_count") or 0),
            awaiting_children=bool(data.get("awaiting_children")),
            cancel_requested=bool(data.get("cancel_requested")),
            sub_task_status_summary=(
                SubTaskStatusSummary.model_validate(summary) if summary is not None else None
            ),
        )
