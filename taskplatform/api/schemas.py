"""API request and response bodies."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from taskplatform.api.deps import NO_NUL
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.models.attempt import AttemptRecord
from taskplatform.submission import MAX_BULK_TASKS, SubmitRequest

T = TypeVar("T")

#: ``view`` of a task list: ``full`` (the default, every field) or ``summary`` (without the
#: fields that may be large).
TaskView = Literal["full", "summary"]
#: What ``view=summary`` leaves out of each listed task.
SUMMARY_LEFT_OUT = frozenset({"parameters", "result", "progress", "metadata"})
#: Documents a list takes from the store at a time: what a page holds in memory beyond its
#: byte bound is at most one such batch.
FETCH_BATCH = 50


class TaskCreated(BaseModel):
    """Answer to a submission."""

    task_id: str
    status: TaskStatus


class BulkSubmitItem(SubmitRequest):
    """One task of a bulk submission: the single submission's body, plus its idempotency key."""

    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=NO_NUL,
        description="As the single submission's Idempotency-Key header: the same key (and user) and the "
        "same task again gives the first task (outcome `existing`); with a different task, 422 "
        "`idempotency_key_reused`",
    )


def inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` written in where they are referenced: a schema embedded in
    another document (``WithJsonSchema``) cannot point at its own ``#/$defs/…``, which would
    resolve against the OpenAPI document and break its readers (ReDoc stops rendering)."""
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: resolve(v) for k, v in node.items() if k != "$ref"}
                return {**resolve(definitions[ref.removeprefix("#/$defs/")]), **rest}
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


#: A bulk item as the envelope takes it: any object, checked item by item by the route (so one
#: answer names every invalid item), documented as a BulkSubmitItem.
BulkItemJson = Annotated[
    dict[str, Any], WithJsonSchema(inline_definitions(BulkSubmitItem.model_json_schema()))
]


class BulkSubmitRequest(BaseModel):
    """A bulk submission: 1 to MAX_BULK_TASKS tasks, each a single submission's body with an
    optional ``idempotency_key``."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BulkItemJson] = Field(min_length=1, max_length=MAX_BULK_TASKS)


#: What happened to one item of a bulk submission.
BulkOutcome = Literal["created", "existing", "stored_unpublished"]


class BulkItemResult(BaseModel):
    """One item's result, at its ``index`` in the request. ``outcome``: ``created`` (stored and
    published), ``existing`` (its idempotency key made this task before), ``stored_unpublished``
    (stored; the broker is unreachable and the outbox publishes it when it returns)."""

    index: int
    task_id: str
    status: TaskStatus
    outcome: BulkOutcome


class BulkSubmitted(BaseModel):
    """Answer to a bulk submission: one result per item, in the request's order."""

    results: list[BulkItemResult]


class TaskCancellation(BaseModel):
    """Answer to a cancel request: CANCELLED at once, or RUNNING with ``cancel_requested``."""

    task_id: str
    status: TaskStatus
    cancel_requested: bool


class TaskList(BaseModel):
    """A page of tasks, newest first. A page ends early, with a ``next_cursor``, once its items
    reach ``API_MAX_PAGE_BYTES``; with ``view=summary`` the items leave out ``parameters``,
    ``result``, ``progress`` and ``metadata``."""

    items: list[BackgroundTask]
    next_cursor: str | None = None


class AttemptList(BaseModel):
    """A task's attempts, oldest first (its newest 500): each as it ended, and the one running
    now (``outcome: running``, no end) while the task runs. ``generation`` counts replays."""

    task_id: str
    status: TaskStatus
    attempts: list[AttemptRecord]


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


async def bounded_items(
    fetch: Callable[[int, str | None], Awaitable[tuple[Sequence[T], str | None]]],
    *,
    limit: int,
    cursor: str | None,
    max_bytes: int,
    render: Callable[[T], bytes],
    cursor_of: Callable[[T], str],
) -> tuple[list[bytes], str | None]:
    """Up to ``limit`` items from ``fetch(count, cursor)``, each rendered to JSON, stopping
    before the item that would take them past ``max_bytes`` (the first item always comes);
    returns them and the cursor after the last one (None when nothing follows).

    The store is read in batches of at most FETCH_BATCH, sized by the items seen so far, so
    a page of large documents never holds ``limit`` of them at once."""
    parts: list[bytes] = []
    size = 0
    batch_size = min(limit, FETCH_BATCH)
    while True:
        batch, after = await fetch(batch_size, cursor)
        for n, item in enumerate(batch):
            part = render(item)
            if parts and size + len(part) > max_bytes:
                # cut here: continue after the last item sent (the previous batch's when n == 0)
                return parts, cursor_of(batch[n - 1]) if n else cursor
            parts.append(part)
            size += len(part) + 1
        if after is None or not batch or len(parts) >= limit:
            return parts, after
        cursor = after
        average = max(1, size // len(parts))
        batch_size = max(1, min(limit - len(parts), FETCH_BATCH, (max_bytes - size) // average + 1))


def list_response(parts: list[bytes], next_cursor: str | None, **extra: bytes) -> Response:
    """The JSON body ``{"items": [...], "next_cursor": ..., **extra}`` from rendered items
    (``extra``: members already rendered to JSON)."""
    members = [b'"items":[' + b",".join(parts) + b"]", b'"next_cursor":' + json.dumps(next_cursor).encode()]
    members += [json.dumps(name).encode() + b":" + value for name, value in extra.items()]
    return Response(content=b"{" + b",".join(members) + b"}", media_type="application/json")
