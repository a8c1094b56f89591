"""Dead letters as the store keeps them, and the audit log of what operators did with them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models.task import ErrorInfo, utcnow


class DeadLetterStatus(str, Enum):
    """Where an operator is with a dead letter."""

    PENDING = "pending"  # waiting for an operator
    REPLAYED = "replayed"  # its task was sent back to the queue
    DISCARDED = "discarded"  # an operator gave it up; the task stays DEAD_LETTER

    def __str__(self) -> str:
        return self.value


class DeathRecord(BaseModel):
    """One entry of RabbitMQ's ``x-death`` header: a queue the message died in, and why.

    A message the platform moved to the DLQ itself (a malformed one, with its reason) has no
    ``x-death``; its record holds one entry with ``source`` "platform" built from the
    headers the worker added (``x-dead-reason``, ``x-dead-at``).
    """

    model_config = ConfigDict(extra="ignore")

    source: Literal["broker", "platform"] = "broker"
    reason: str
    queue: str | None = None
    exchange: str | None = None
    count: int = 1
    time: datetime | None = None
    routing_keys: list[str] = Field(default_factory=list)


class DeadLetter(BaseModel):
    """One dead task (or one dead message that names no task), as operators see it.

    A task has one record: a duplicate of its dead message only counts ``times_seen``, and
    a task that dies again after a replay reopens its record (``deaths`` + 1). A message
    that names no task is keyed by a hash of its content.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    task_id: str | None = None
    task_type: str | None = None
    user_id: str | None = None
    #: Why it died: the dead-lettering reason (``x-dead-reason``, the task's error reason),
    #: else RabbitMQ's (``rejected``, ``delivery_limit``, ``expired``, ``maxlen``).
    reason: str
    error_type: str | None = None
    error_info: ErrorInfo | None = None
    attempt: int | None = None
    #: The task's replay generation the dead message belongs to (0 before any replay).
    generation: int = 0
    exchange: str | None = None
    routing_key: str | None = None
    body: str = ""
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    properties: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, Any] = Field(default_factory=dict)
    x_death: list[DeathRecord] = Field(default_factory=list)
    status: DeadLetterStatus = DeadLetterStatus.PENDING
    deaths: int = 1
    times_seen: int = 1
    first_seen_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)
    replayed_at: datetime | None = None
    replay_count: int = 0
    discarded_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    version: int = 1


AuditAction = Literal["replay", "bulk_replay", "discard"]


def new_audit_id() -> str:
    return uuid.uuid4().hex


class AuditEntry(BaseModel):
    """One operator action on dead letters: who, when, what, on which, and how it ended."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_audit_id)
    at: datetime = Field(default_factory=utcnow)
    actor: str
    action: AuditAction
    dead_letter_ids: list[str] = Field(default_factory=list)
    #: The filter of a bulk action (as given), None for single ones.
    filter: dict[str, Any] | None = None
    dry_run: bool = False
    parameters_overridden: bool = False
    #: ``ok``, ``partial``, or what went wrong.
    outcome: str
    details: dict[str, Any] = Field(default_factory=dict)
