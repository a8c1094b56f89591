"""One attempt of a task, as its history keeps it (``GET /api/v1/tasks/{id}/attempts``).

A record is written when the attempt ends, by the state aggregator, from the event that ended
it and the task as it was while it ran: which attempt of which generation (replays start a new
one), where it ran, when, how it ended and why. Its id is the id of that event, so a producer
that publishes the event again (after a store fault) writes the same record once.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

#: The longest error message a record keeps (the task's ``error_info`` keeps the last in full).
ERROR_MESSAGE_LIMIT = 2000
#: Attempts a task's history keeps, the newest (older ones are dropped as new ones come).
MAX_ATTEMPTS_KEPT = 500


class AttemptOutcome(str, Enum):
    """How an attempt ended."""

    COMPLETED = "completed"
    #: Its execute returned after submitting sub-tasks: the task waits for them.
    WAITING_FOR_CHILDREN = "waiting-for-children"
    FAILED = "failed"
    TIMED_OUT = "timed-out"
    CANCELLED = "cancelled"
    #: Its worker vanished (its lease lapsed): the reaper ended it.
    LOST = "lost"
    #: Its worker gave it back unfinished (shutting down); the same attempt runs again.
    GIVEN_BACK = "given-back"
    #: Still running (only in a listing: the task's current attempt, never stored).
    RUNNING = "running"


class AttemptRecord(BaseModel):
    """One attempt: see the module."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(max_length=200)
    task_id: str = Field(max_length=200)
    #: The task's replay generation (0 until it is replayed from the dead letters).
    generation: int = Field(ge=0)
    #: The attempt number (the task's ``retry_count`` while it ran), from 0.
    attempt: int = Field(ge=0)
    node_id: str | None = Field(default=None, max_length=255)
    host: str | None = Field(default=None, max_length=255)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    outcome: AttemptOutcome
    error_type: str | None = Field(default=None, max_length=255)
    error_message: str | None = None
    #: The failure was retried (a next attempt was scheduled).
    retried: bool = False
