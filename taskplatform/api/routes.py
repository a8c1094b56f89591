"""HTTP routes: tasks, task types, health."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import StringConstraints

from taskplatform.api.attempts import running_attempt, with_hosts
from taskplatform.api.auth import (
    AUTH_RESPONSES,
    SubmitterDep,
    require_operator_if_protected,
    require_submitter,
)
from taskplatform.api.deps import NO_NUL, CommandsDep, RuntimeDep, command_answers
from taskplatform.api.errors import ErrorBody, error_response
from taskplatform.api.ratelimit import SUBMIT_RATE_LIMITED, SubmitRateLimit
from taskplatform.api.schemas import (
    SUMMARY_LEFT_OUT,
    AttemptList,
    Health,
    QueueFigures,
    Readiness,
    TaskCancellation,
    TaskCreated,
    TaskList,
    TaskTypeInfo,
    TaskView,
    bounded_items,
    list_response,
)
from taskplatform.auth import Principal
from taskplatform.commands import shown, visible_filter
from taskplatform.errors import TRANSIENT_BROKER_ERRORS, StoreError
from taskplatform.metrics.exposition import render
from taskplatform.models import MAX_PRIORITY, BackgroundTask, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.storable import MAX_TAGS
from taskplatform.store.base import MAX_PAGE_SIZE, TaskFilter, encode_cursor
from taskplatform.submission import IdempotencyKeyReusedError, SubmitRequest
from topology import queue_depths

ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    **{code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503)},
}

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL, description="Task id")]


tasks_router = APIRouter(
    prefix="/api/v1",
    tags=["tasks"],
    responses=ERRORS,
    dependencies=[Depends(require_submitter)],
)


ViewQuery = Annotated[
    TaskView,
    Query(
        description="full (default): every field; summary: without parameters, result, progress "
        "and metadata (fetch one task for those)"
    ),
]


async def task_page(
    runtime: Runtime,
    principal: Principal,
    filters: TaskFilter,
    limit: int,
    cursor: str | None,
    view: TaskView,
) -> Response:
    """A list page as the caller may read it, at most ``API_MAX_PAGE_BYTES`` of items (one at
    least): a page of large tasks ends early, with the cursor after its last item."""
    left_out = set(SUMMARY_LEFT_OUT) if view == "summary" else None

    async def fetch(count: int, after: str | None) -> tuple[list[BackgroundTask], str | None]:
        page = await runtime.store.list(filters, limit=count, cursor=after)
        return page.items, page.next_cursor

    parts, next_cursor = await bounded_items(
        fetch,
        limit=limit,
        cursor=cursor,
        max_bytes=runtime.settings.api_max_page_bytes,
        render=lambda t: shown(principal, t).model_dump_json(exclude=left_out).encode(),
        cursor_of=lambda t: encode_cursor(t.created_at, t.id),
    )
    return list_response(parts, next_cursor)


@tasks_router.post(
    "/tasks",
    status_code=201,
    response_model=TaskCreated,
    summary="Submit a task",
    responses={
        200: {
            "model": TaskCreated,
            "description": "An earlier submission with this Idempotency-Key (and the same body)",
        },
        202: {
            "model": TaskCreated,
            "description": "Stored; the broker is unreachable, so the "
            "message waits in the outbox and is published when the broker returns",
        },
        422: {
            "model": ErrorBody,
            "description": "Nothing was stored. `error.code`: `validation_error` (the body, or a "
            "batch heavier than `API_SUBMIT_BURST`), "
            "`invalid_parameters` (the parameters, against the task type), `unknown_task_type`; "
            "`idempotency_key_reused`: the Idempotency-Key was used before with a different "
            "submission (details name the key and that task)",
        },
        **SUBMIT_RATE_LIMITED,
    },
)
async def submit_task(
    body: SubmitRequest,
    runtime: RuntimeDep,
    commands: CommandsDep,
    principal: SubmitterDep,
    response: Response,
    _limited: SubmitRateLimit,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=NO_NUL,
            description="Submitting again with the same key (and user) and the same body returns the "
            "first task, 200; with a different body, 422 `idempotency_key_reused`",
        ),
    ] = None,
) -> TaskCreated | JSONResponse:
    """Validate the parameters against the task type, store the task, publish it.

    The task belongs to the token's subject; only an admin may name another ``user_id``. With
    ``API_SUBMIT_RATE`` set, a caller past its limit gets 429 with ``Retry-After``; a batch is
    charged its children too, and one heavier than ``API_SUBMIT_BURST`` gets 422."""
    try:
        with command_answers():
            submitted = await commands.submit(body, principal, idempotency_key=idempotency_key)
    except IdempotencyKeyReusedError as exc:
        details = [{"idempotency_key": exc.key, "task_id": exc.task_id}]
        return error_response(422, "idempotency_key_reused", str(exc), details)
    if not submitted.created:
        response.status_code = 200
        return TaskCreated(task_id=submitted.task.id, status=submitted.task.status)
    if not submitted.published:
        response.status_code = 202
    return TaskCreated(task_id=submitted.task.id, status=submitted.task.status)


@tasks_router.get("/tasks/{task_id}", response_model=BackgroundTask, summary="Get a task")
async def get_task(task_id: TaskId, commands: CommandsDep, principal: SubmitterDep) -> BackgroundTask:
    with command_answers():
        return shown(principal, await commands.find(task_id, principal))


@tasks_router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskCancellation,
    summary="Cancel a task",
    responses={
        202: {"model": TaskCancellation, "description": "Running: the worker was asked to stop it"},
        409: {"model": ErrorBody, "description": "Already finished; the body names its status"},
    },
)
async def cancel_task(
    task_id: TaskId, commands: CommandsDep, principal: SubmitterDep, response: Response
) -> TaskCancellation:
    """QUEUED or RETRYING: CANCELLED now. RUNNING: the executable sees ``ctx.cancelled`` and is
    stopped if it does not end by itself; the task ends CANCELLED. A parent waiting for its
    children: CANCELLED now. A cancelled parent cancels its unfinished children. Finished: 409."""
    with command_answers():
        task = await commands.cancel(task_id, principal)
    if task.status is TaskStatus.RUNNING and task.cancel_requested:
        response.status_code = 202
    return TaskCancellation(task_id=task.id, status=task.status, cancel_requested=task.cancel_requested)


@tasks_router.get(
    "/tasks/{task_id}/children", response_model=TaskList, summary="List a task's sub-tasks, newest first"
)
async def list_children(
    task_id: TaskId,
    runtime: RuntimeDep,
    commands: CommandsDep,
    principal: SubmitterDep,
    status: TaskStatus | None = None,
    node: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=255,
            pattern=NO_NUL,
            description="Only the children aimed at this worker node or run on it (a fan-out's host)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    view: ViewQuery = "full",
) -> Response:
    """The children of a parent task (``sub_task_status_summary`` on the parent counts them);
    ``node`` keeps those aimed at or run on one worker node (a ``mode: each`` fan-out's host)."""
    with command_answers():
        parent = await commands.find(task_id, principal)
    # Children inherit their parent's user id; filtering by it as well keeps that an invariant.
    owner = None if principal.can_see_all else parent.user_id
    filters = TaskFilter(parent_task_id=task_id, status=status, user_id=owner, node=node)
    return await task_page(runtime, principal, filters, limit, cursor, view)


@tasks_router.get(
    "/tasks/{task_id}/attempts", response_model=AttemptList, summary="List a task's attempts, oldest first"
)
async def list_attempts(
    task_id: TaskId, runtime: RuntimeDep, commands: CommandsDep, principal: SubmitterDep
) -> AttemptList:
    """Every attempt of the task: number, replay generation, node and host, start, end,
    duration, outcome (``completed``, ``waiting-for-children``, ``failed``, ``timed-out``,
    ``cancelled``, ``lost``: its worker vanished, ``given-back``: its worker stopped, and
    ``running`` for the one running now) and error. Kept while the task is."""
    with command_answers():
        task = await commands.find(task_id, principal)
    records = await runtime.store.list_attempts(task.id)
    current = running_attempt(task)
    if current is not None and all(r.id != current.id for r in records):
        records.append(current)
    return AttemptList(task_id=task.id, status=task.status, attempts=await with_hosts(runtime, records))


@tasks_router.get("/tasks", response_model=TaskList, summary="List tasks, newest first")
async def list_tasks(
    runtime: RuntimeDep,
    principal: SubmitterDep,
    status: TaskStatus | None = None,
    task_type: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    user_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    parent_task_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    priority: Annotated[int | None, Query(ge=0, le=MAX_PRIORITY)] = None,
    tag: Annotated[
        list[Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)]] | None,
        Query(description="Repeat to require several tags", max_length=MAX_TAGS),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    view: ViewQuery = "full",
) -> Response:
    """Operators and admins list every user's tasks; a submitter lists its own only."""
    filters = TaskFilter(
        status=status,
        task_type=task_type,
        user_id=user_id,
        parent_task_id=parent_task_id,
        priority=priority,
        tags=tuple(tag or ()),
    )
    with command_answers():
        filters = visible_filter(principal, filters)
    return await task_page(runtime, principal, filters, limit, cursor, view)


@tasks_router.get("/task-types", response_model=list[TaskTypeInfo], summary="Registered task types")
async def list_task_types(runtime: RuntimeDep) -> list[TaskTypeInfo]:
    return [
        TaskTypeInfo(
            task_type=cls.task_type,
            queue=cls.queue,
            description=cls.description,
            parameters_schema=cls.Params.model_json_schema(),
            result_schema=cls.Result.model_json_schema(),
        )
        for cls in sorted(runtime.registry, key=lambda c: c.task_type)
    ]


health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


#: What a queue probe may meet while the broker goes away.
_PROBE_FAULTS: tuple[type[BaseException], ...] = (TimeoutError, *TRANSIENT_BROKER_ERRORS)


@health_router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="Readiness: store and broker reachable",
    dependencies=[Depends(require_operator_if_protected)],
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(runtime.store.ping(), timeout=3)
        checks["store"] = "ok"
    except (StoreError, TimeoutError) as exc:
        checks["store"] = f"unavailable: {exc}"
    checks["broker"] = (
        "ok" if runtime.broker.is_connected and runtime.broker_ready.is_set() else "unavailable"
    )
    queues: dict[str, QueueFigures | None] | None = None
    if checks["broker"] == "ok":
        try:
            depths = await asyncio.wait_for(queue_depths(runtime.broker.connection, runtime.topology), 3)
            queues = {name: QueueFigures(**vars(d)) if d else None for name, d in depths.items()}
        except _PROBE_FAULTS as exc:
            checks["broker"] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks, queues=queues)
    return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())


@health_router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_operator_if_protected)])
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics of this process (of every API process, in multiprocess mode)."""
    body, content_type = render(runtime.metrics)
    return Response(content=body, media_type=content_type)


@health_router.get("/swagger/index.html", include_in_schema=False)
async def swagger_redirect() -> RedirectResponse:
    return RedirectResponse("/docs", status_code=307)
