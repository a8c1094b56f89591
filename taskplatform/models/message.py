"""The AMQP message that carries a task to a worker."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models.target import TaskTarget
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
#: A copy standing in for a redelivery: its task was held by this node (the owner) when the
#: copy was made; the copy waits for that lease to lapse instead of being skipped as a duplicate.
HEADER_AWAIT_OWNER = "x-await-owner"
HEADER_AWAIT_SINCE = "x-await-since"  # epoch milliseconds: when the wait for the owner began

CONTENT_TYPE = "application/json"
SCHEMA_VERSION = 1


def copy_message_id(message_id: str | None, body: bytes, routing_key: str | None) -> str:
    """The message id a platform copy of a message carries (a dead-letter, parked or returned
    copy): the message's own, or, for a message published without one, an id made from its body
    and routing key. Without it the client library would mint a random id for each copy, and a
    message dying twice would look like two messages (a dead-letter record's id includes the
    message id)."""
    if message_id:
        return message_id
    digest = hashlib.sha256(body)
    digest.update(b"\x00" + (routing_key or "").encode("utf-8", "surrogatepass"))
    return f"copy-{digest.hexdigest()[:32]}"


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
    #: Where the task is aimed (``BackgroundTask.target``): the message goes to its node's queue,
    #: or its selector's (``target_route``), and so does every copy of it (retries, hand-backs,
    #: the outbox's).
    target: TaskTarget | None = None

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
            target=task.target,
        )

    @property
    def target_route(self) -> str | None:
        """The routing key of an aimed task (``TaskTarget.route``); None: by type and priority."""
        return self.target.route(self.task_type) if self.target is not None else None

    @property
    def message_id(self) -> str:
        """Unique per task attempt: a redelivery of the same attempt carries the same id."""
        if self.generation:
            return f"{self.task_id}:r{self.generation}:{self.attempt}"
        return f"{self.task_id}:{self.attempt}"


@dataclass(frozen=True)
class AwaitOwner:
    """A message waiting for another worker's lease on its task: whom, and since when.

    A redelivered message (its previous holder lost its channel, most likely by dying) whose
    task still runs under a live lease cannot run and must not be dropped: it goes round the
    delay path until the lease lapses, carrying these headers, and takes over then (or finds
    the owner's outcome stored). Waiting gives up after a bound (see the consumer).
    """

    owner: str
    since: datetime

    @classmethod
    def start(cls, owner: str, now: datetime) -> AwaitOwner:
        """A wait for ``owner`` beginning ``now`` (the store's clock: the header travels to
        other workers, who compare it with theirs)."""
        return cls(owner, now)

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> AwaitOwner | None:
        """The wait a message carries, or None (also for unreadable values)."""
        if not headers:
            return None
        owner, since = headers.get(HEADER_AWAIT_OWNER), headers.get(HEADER_AWAIT_SINCE)
        if isinstance(owner, bytes):
            owner = owner.decode("utf-8", "replace")
        if not isinstance(owner, str) or not isinstance(since, int) or isinstance(since, bool):
            return None
        try:
            return cls(owner[:200], datetime.fromtimestamp(since / 1000, UTC))
        except (OverflowError, OSError, ValueError):
            return None

    def headers(self) -> dict[str, Any]:
        return {HEADER_AWAIT_OWNER: self.owner, HEADER_AWAIT_SINCE: int(self.since.timestamp() * 1000)}
