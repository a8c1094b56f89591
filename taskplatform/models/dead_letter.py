"""Dead letters as the store keeps them, and the audit log of what operators did with them."""

from __future__ import annotations

import base64
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


#: The most of a dead message's body a record keeps (1 MiB); a longer body is cut there
#: (``body_truncated``), its full size and SHA-256 kept.
MAX_BODY_BYTES = 1024 * 1024

BodyEncoding = Literal["utf-8", "base64"]


def body_as_text(raw: bytes) -> tuple[str, BodyEncoding]:
    """``raw`` as the API shows it: the text when it is UTF-8 (NUL included), else base64."""
    try:
        return raw.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


def body_from_text(body: str, encoding: BodyEncoding) -> bytes:
    """The bytes ``body`` (as shown, in ``encoding``) stands for."""
    return base64.b64decode(body) if encoding == "base64" else body.encode()


def body_in(raw: bytes, encoding: BodyEncoding) -> str:
    """``raw`` shown in ``encoding`` (the inverse of ``body_from_text``)."""
    return base64.b64encode(raw).decode() if encoding == "base64" else raw.decode()


class DeadLetter(BaseModel):
    """One dead task (or one dead message), as operators see it.

    A task has one record (``kind`` "task", its id is the task id): a duplicate of its dead
    message only counts ``times_seen``, and a task that dies again after a replay reopens its
    record (``deaths`` + 1). A message that is not a well-formed task message (``kind``
    "message": malformed, or naming no task) gets a record of its own, keyed by a hash of its
    content; ``task_id`` still names the task it claims to be, as a link.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    #: "task": the task's own message (decodes with the platform codec); "message": anything else.
    kind: Literal["task", "message"] = "task"
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
    #: The body as it arrived (its first MAX_BODY_BYTES): text when UTF-8, else base64.
    body: str = ""
    body_encoding: BodyEncoding = "utf-8"
    #: Bytes of the body as it arrived, and their SHA-256 (hex); None on records made before.
    body_size: int | None = None
    body_sha256: str | None = None
    #: The body was longer than MAX_BODY_BYTES; ``body`` holds its beginning only.
    body_truncated: bool = False
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

    def body_bytes(self) -> bytes:
        """The body's bytes (what the store keeps, binary-safe)."""
        return body_from_text(self.body, self.body_encoding)


#: What the audit log records: actions on tasks (submit, cancel, patch, delete) and on dead
#: letters (replay, bulk replay, discard).
AuditAction = Literal["submit", "cancel", "patch", "delete", "replay", "bulk_replay", "discard"]


def new_audit_id() -> str:
    return uuid.uuid4().hex


class AuditEntry(BaseModel):
    """One action someone took on tasks or dead letters: who, when, what, on which, and how it
    ended."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_audit_id)
    at: datetime = Field(default_factory=utcnow)
    actor: str
    action: AuditAction
    dead_letter_ids: list[str] = Field(default_factory=list)
    #: The tasks it acted on (a bulk submission names every task it created).
    task_ids: list[str] = Field(default_factory=list)
    #: The filter of a bulk action (as given), None for single ones.
    filter: dict[str, Any] | None = None
    dry_run: bool = False
    parameters_overridden: bool = False
    #: ``ok``, ``partial``, or what went wrong.
    outcome: str
    details: dict[str, Any] = Field(default_factory=dict)
