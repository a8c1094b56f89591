"""The DeadLetter API: list, inspect, replay and discard dead letters; read the audit log.

Operators and admins only. The audit log names the token's subject as the actor; with
authentication disabled, ``X-Operator`` names who acts (default "anonymous").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from taskplatform.api.auth import AUTH_RESPONSES, OperatorDep, require_operator
from taskplatform.api.deps import NO_NUL, CommandsDep, RuntimeDep, command_answers
from taskplatform.api.errors import ErrorBody
from taskplatform.api.schemas import bounded_items, list_response
from taskplatform.deadletters.service import MAX_BULK
from taskplatform.errors import InvalidInputError
from taskplatform.models import AuditEntry, DeadLetter, DeadLetterStatus, TaskStatus
from taskplatform.storable import ensure_shallow
from taskplatform.store.base import MAX_PAGE_SIZE, encode_cursor
from taskplatform.store.deadletters import DeadLetterCounts, DeadLetterFilter, filter_time

RecordId = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="Dead letter id")]
ShortText = Annotated[str | None, Query(max_length=255, pattern=NO_NUL)]
#: A time bound with its UTC offset, validated here so a bad one names its own parameter.
TimeBound = Annotated[datetime | None, AfterValidator(filter_time)]

ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    **{code: {"model": ErrorBody} for code in (400, 404, 409, 413, 422, 503)},
}


async def audit_actor(
    principal: OperatorDep,
    x_operator: Annotated[
        str | None,
        Header(
            max_length=100,
            pattern=NO_NUL,
            description="Who acts, for the audit log; only read while authentication is disabled "
            "(otherwise the token's subject acts)",
        ),
    ] = None,
) -> str:
    """Who acts, for the audit log: the token's subject, or ``X-Operator`` without authentication."""
    if principal.subject is not None:
        return principal.subject
    return x_operator or "anonymous"


Actor = Annotated[str, Depends(audit_actor)]

router = APIRouter(
    prefix="/api/v1/dead-letters",
    tags=["dead letters"],
    responses=ERRORS,
    dependencies=[Depends(require_operator)],
)


class DeadLetterList(BaseModel):
    """A page of dead letters, newest first, and counts over everything that matches. A page
    ends early, with a ``next_cursor``, once its items reach ``API_MAX_PAGE_BYTES``."""

    items: list[DeadLetter]
    next_cursor: str | None = None
    counts: DeadLetterCounts


class ReplayRequest(BaseModel):
    """Optional replacement parameters, validated against the task type's Params."""

    model_config = ConfigDict(extra="forbid", strict=True)

    parameters: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _shallow(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Deeper nesting stops the serializer before the replay could refuse (and audit) it.
        try:
            ensure_shallow(value, ())
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None
        return value


class ReplayResult(BaseModel):
    """The record after the replay, and the task, QUEUED again."""

    dead_letter: DeadLetter
    task_id: str
    task_status: TaskStatus


class BulkReplayRequest(BaseModel):
    """Which pending dead letters to replay, how many, how fast; ``dry_run`` only lists them."""

    model_config = ConfigDict(extra="forbid")

    task_type: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    reason: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    user_id: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    error_type: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    since: datetime | None = None
    until: datetime | None = None
    # strict numbers and flags (no "5" or "true"); the times stay ISO 8601 text
    limit: int = Field(default=100, ge=1, le=MAX_BULK, strict=True)
    dry_run: bool = Field(default=False, strict=True)
    rate: float | None = Field(default=None, gt=0, le=10_000, strict=True, description="replays per second")

    @field_validator("since", "until")
    @classmethod
    def _aware_utc(cls, value: datetime | None) -> datetime | None:
        return filter_time(value)


class BulkReplayResult(BaseModel):
    """What matched, what was replayed, what could not be (id -> why)."""

    dry_run: bool
    matched: list[str]
    replayed: list[str]
    failed: dict[str, str]
    seconds: float


class AuditList(BaseModel):
    """A page of the audit log, newest first."""

    items: list[AuditEntry]
    next_cursor: str | None = None


def _filters(
    status: DeadLetterStatus | None,
    task_type: str | None,
    reason: str | None,
    user_id: str | None,
    error_type: str | None,
    since: datetime | None,
    until: datetime | None,
) -> DeadLetterFilter:
    return DeadLetterFilter(
        status=status,
        task_type=task_type,
        reason=reason,
        user_id=user_id,
        error_type=error_type,
        since=since,
        until=until,
    )


@router.get("", response_model=DeadLetterList, summary="List dead letters, newest first")
async def list_dead_letters(
    runtime: RuntimeDep,
    status: Annotated[
        Literal["pending", "replayed", "discarded", "any"],
        Query(description="pending (default), replayed, discarded, or any"),
    ] = "pending",
    task_type: ShortText = None,
    reason: ShortText = None,
    user_id: ShortText = None,
    error_type: ShortText = None,
    task_id: Annotated[
        str | None,
        Query(max_length=255, pattern=NO_NUL, description="the task's record and the messages naming it"),
    ] = None,
    since: Annotated[TimeBound, Query(description="last seen at or after (with a UTC offset)")] = None,
    until: Annotated[TimeBound, Query(description="last seen before (with a UTC offset)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    wanted = None if status == "any" else DeadLetterStatus(status)
    filters = _filters(wanted, task_type, reason, user_id, error_type, since, until)
    if task_id is not None:
        filters = filters.model_copy(update={"task_id": task_id})

    async def fetch(count: int, after: str | None) -> tuple[list[DeadLetter], str | None]:
        page = await runtime.store.list_dead_letters(filters, limit=count, cursor=after)
        return page.items, page.next_cursor

    # Bodies are up to 1 MiB each: a page stops at API_MAX_PAGE_BYTES, like the task lists.
    parts, next_cursor = await bounded_items(
        fetch,
        limit=limit,
        cursor=cursor,
        max_bytes=runtime.settings.api_max_page_bytes,
        render=lambda d: d.model_dump_json().encode(),
        cursor_of=lambda d: encode_cursor(d.last_seen_at, d.id),
    )
    counts = await runtime.store.count_dead_letters(filters)
    return list_response(parts, next_cursor, counts=counts.model_dump_json().encode())


@router.get("/audit", response_model=AuditList, summary="The audit log of operator actions")
async def list_audit(
    runtime: RuntimeDep,
    dead_letter_id: ShortText = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditList:
    page = await runtime.store.list_audit(limit=limit, cursor=cursor, dead_letter_id=dead_letter_id)
    return AuditList(items=page.items, next_cursor=page.next_cursor)


@router.post("/replay", response_model=BulkReplayResult, summary="Replay pending dead letters by filter")
async def replay_many(body: BulkReplayRequest, commands: CommandsDep, actor: Actor) -> BulkReplayResult:
    """At most ``limit`` records, at ``rate`` per second (default ``DLQ_REPLAY_RATE``); the
    request lasts up to ``limit / rate`` seconds, which may not exceed MAX_BULK_SECONDS."""
    filters = _filters(
        None, body.task_type, body.reason, body.user_id, body.error_type, body.since, body.until
    )
    with command_answers():
        result = await commands.replay_many(
            filters, actor=actor, limit=body.limit, dry_run=body.dry_run, rate=body.rate
        )
    return BulkReplayResult(
        dry_run=result.dry_run,
        matched=result.matched,
        replayed=result.replayed,
        failed=result.failed,
        seconds=result.seconds,
    )


@router.get("/{record_id}", response_model=DeadLetter, summary="One dead letter, whole")
async def get_dead_letter(record_id: RecordId, commands: CommandsDep) -> DeadLetter:
    with command_answers():
        return await commands.dead_letter(record_id)


@router.post("/{record_id}/replay", response_model=ReplayResult, summary="Replay one dead letter")
async def replay_one(
    record_id: RecordId, commands: CommandsDep, actor: Actor, body: ReplayRequest | None = None
) -> ReplayResult:
    """The task goes back to QUEUED with its retry count reset (through the outbox), with
    ``parameters`` replacing its own when given. 409 if the record was replayed or
    discarded already (unless its task died again since), or its task is not dead (a
    message-level dead letter naming a live task); 422 for invalid parameters. Audited."""
    parameters = body.parameters if body is not None else None
    with command_answers():
        replayed = await commands.replay(record_id, actor=actor, parameters=parameters)
    return ReplayResult(
        dead_letter=replayed.record, task_id=replayed.task.id, task_status=replayed.task.status
    )


@router.delete("/{record_id}", response_model=DeadLetter, summary="Discard a dead letter")
async def discard(record_id: RecordId, commands: CommandsDep, actor: Actor) -> DeadLetter:
    """No longer pending; its task stays DEAD_LETTER."""
    with command_answers():
        return await commands.discard(record_id, actor=actor)
