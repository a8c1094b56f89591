"""``POST /api/v1/tasks/bulk``: up to MAX_BULK_TASKS tasks in one request.

Every item is checked (its body, its task type and parameters, its owner, its idempotency key)
before anything is stored: one invalid item refuses the whole request, naming each invalid
item by its index. The new tasks are stored in one write and published in one pipelined batch
of confirmed publishes (``TaskSubmitter.submit_bulk_prepared``). The caller's submission limit
(``API_SUBMIT_RATE``) is charged every task the request holds as it is admitted, before the
items are checked: a request refused afterwards, or whose keyed tasks exist already, costs the
same, as with the single route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import ValidationError

from taskplatform.api.auth import SubmitterDep, require_submitter
from taskplatform.api.deps import CommandsDep, RuntimeDep
from taskplatform.api.errors import ErrorBody, error_response, field_errors
from taskplatform.api.ratelimit import SUBMIT_RATE_LIMITED, charge, submission_weight
from taskplatform.api.routes import ERRORS
from taskplatform.api.schemas import (
    BulkItemResult,
    BulkOutcome,
    BulkSubmitItem,
    BulkSubmitRequest,
    BulkSubmitted,
)
from taskplatform.auth import Principal
from taskplatform.commands import submit_refusal
from taskplatform.submission import (
    MAX_BULK_TASKS,
    BulkItem,
    BulkProblem,
    BulkSubmissionRefused,
    SubmitRequest,
    Submitted,
)

router = APIRouter(
    prefix="/api/v1",
    tags=["tasks"],
    responses=ERRORS,
    dependencies=[Depends(require_submitter)],
)


async def limit_bulk_submissions(request: Request, runtime: RuntimeDep, principal: SubmitterDep) -> None:
    """The submit route's limit, charged every task of the request (each item plus the children
    its executable declares), all at once or not at all: 429 with ``Retry-After`` when they are
    not available now, 422 when they exceed the burst."""
    rate = runtime.settings.api_submit_rate
    if rate is None:
        return
    burst = runtime.settings.api_submit_burst
    try:
        body = await request.json()
    except ValueError:  # not JSON: the route refuses it
        body = None
    items = body.get("tasks") if isinstance(body, dict) else None
    weights = (
        [submission_weight(item, runtime.registry) for item in items] if isinstance(items, list) else [1]
    )
    weight = sum(weights)
    if weight > burst:
        raise HTTPException(
            422,
            f"this bulk submission would create {weight} tasks ({len(weights)} items and the children "
            f"they declare), more than the per-user burst of {burst} (API_SUBMIT_BURST) allows at once; "
            f"send at most {burst} tasks per request",
        )
    await charge(runtime, principal, request, weight, f"; this bulk submission creates {weight} tasks")


BulkRateLimit = Annotated[None, Depends(limit_bulk_submissions)]


def _detail(problem: BulkProblem) -> dict[str, Any]:
    """A problem as one item of the error's ``details``: its ``loc`` from the request's root."""
    detail: dict[str, Any] = {"index": problem.index, "code": problem.code, "msg": problem.message}
    for name, value in problem.details.items():
        detail[name] = ["tasks", problem.index, *value] if name == "loc" else value
    return detail


def _refusal(problems: list[BulkProblem]) -> Response:
    """422 naming every invalid item; ``error.code`` is their code when they share one."""
    exc = BulkSubmissionRefused(problems)
    codes = {p.code for p in exc.problems}
    code = codes.pop() if len(codes) == 1 else "validation_error"
    return error_response(422, code, str(exc), [_detail(p) for p in exc.problems])


def _schema_problems(index: int, exc: ValidationError) -> list[BulkProblem]:
    return [
        BulkProblem(
            index,
            "validation_error",
            f"{'.'.join(map(str, err['loc'])) or 'item'}: {err['msg']}",
            {"loc": err["loc"], "type": err["type"]},
        )
        for err in field_errors(exc)
    ]


def _outcome(submitted: Submitted) -> BulkOutcome:
    if not submitted.created:
        return "existing"
    return "created" if submitted.published else "stored_unpublished"


def _status(outcomes: set[BulkOutcome]) -> int:
    if outcomes == {"created"}:
        return 201
    return 202 if "stored_unpublished" in outcomes else 200


@router.post(
    "/tasks/bulk",
    status_code=201,
    response_model=BulkSubmitted,
    summary=f"Submit up to {MAX_BULK_TASKS:,} tasks",
    responses={
        200: {
            "model": BulkSubmitted,
            "description": "Some items' idempotency keys made their tasks before (outcome `existing`); "
            "the others were created",
        },
        202: {
            "model": BulkSubmitted,
            "description": "Stored, but the broker is unreachable: items with outcome "
            "`stored_unpublished` wait in the outbox and are published when the broker returns",
        },
        403: {
            "model": ErrorBody,
            "description": "An item names another `user_id` and the token is not an admin's, or is of a "
            "task type that needs a higher role (`run_command`: operator); details list those items; "
            "nothing was stored",
        },
        413: {
            "model": ErrorBody,
            "description": "The body is larger than `MAX_BODY_BYTES`: send fewer tasks per request",
        },
        422: {
            "model": ErrorBody,
            "description": f"Nothing was stored. The body is not 1 to {MAX_BULK_TASKS:,} objects, or "
            "items are invalid: `details` has one entry per problem, each with the item's `index`, "
            "its `code` (`validation_error`, `unknown_task_type`, `invalid_parameters`, "
            "`idempotency_key_reused` with `task_id`, `duplicate_idempotency_key` with both "
            "`indexes`), `msg`, and `loc` from the body's root where a field is at fault; "
            "`error.code` is the items' code when they share one. Also: more tasks than "
            "`API_SUBMIT_BURST`",
        },
        **SUBMIT_RATE_LIMITED,
    },
)
async def submit_tasks_bulk(
    body: BulkSubmitRequest,
    runtime: RuntimeDep,
    commands: CommandsDep,
    principal: SubmitterDep,
    _limited: BulkRateLimit,
) -> Response:
    """Validate every task, then store and publish them together; one result per item, in order.

    Each item is the single submission's body plus an optional ``idempotency_key`` (the
    ``Idempotency-Key`` header's rules, item by item). If any item is invalid, names another
    user without an admin's token, or reuses a key with a different task, nothing is stored.
    Answers 201 when every task was created, 202 when some wait for the broker (outcome
    ``stored_unpublished``), else 200 (some were ``existing``)."""
    items: list[BulkItem] = []
    positions: list[int] = []
    problems: list[BulkProblem] = []
    foreign: list[int] = []
    beyond_role: list[tuple[int, str]] = []
    for index, raw in enumerate(body.tasks):
        try:
            item = BulkSubmitItem.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_schema_problems(index, exc))
            continue
        if _names_another_user(principal, item.user_id):
            foreign.append(index)
            continue
        refusal = submit_refusal(principal, runtime.registry, item.task_type)
        if refusal is not None:
            beyond_role.append((index, refusal))
            continue
        # The task belongs to the caller unless (an admin's) item names its user, as submit_task's.
        fields = {name: getattr(item, name) for name in SubmitRequest.model_fields}
        fields["user_id"] = principal.subject if item.user_id is None else item.user_id
        request = SubmitRequest.model_construct(**fields)
        items.append(BulkItem(request, item.idempotency_key))
        positions.append(index)
    if foreign:
        shown = ", ".join(map(str, foreign[:10])) + (", …" if len(foreign) > 10 else "")
        return error_response(
            403,
            "forbidden",
            f"only an admin may submit for another user: items {shown} name a user_id that is not the "
            "token's subject; leave user_id out",
            [{"index": i, "loc": ["tasks", i, "user_id"]} for i in foreign],
        )
    if beyond_role:
        shown = ", ".join(str(i) for i, _ in beyond_role[:10]) + (", …" if len(beyond_role) > 10 else "")
        await commands.audit.record(
            principal.subject or "anonymous",
            "submit",
            [],
            outcome=f"refused: items {shown}: {beyond_role[0][1]}",
            details={"bulk": True},
        )
        return error_response(
            403,
            "forbidden",
            f"items {shown} are of a task type this token may not submit: {beyond_role[0][1]}",
            [{"index": i, "loc": ["tasks", i, "task_type"], "msg": why} for i, why in beyond_role],
        )
    tasks, more = runtime.submitter.prepare_bulk(items, indexes=positions)
    if problems or more:
        return _refusal(problems + more)
    # Every item is valid from here, so the tasks are the request's items in order.
    try:
        submitted = await runtime.submitter.submit_bulk_prepared(tasks)
    except BulkSubmissionRefused as exc:  # keys reused with another task: nothing was stored
        return _refusal(exc.problems)
    results = [
        BulkItemResult(index=index, task_id=s.task.id, status=s.task.status, outcome=_outcome(s))
        for index, s in enumerate(submitted)
    ]
    created = [s.task.id for s in submitted if s.created]
    if created:
        types = sorted({s.task.task_type for s in submitted if s.created})
        await commands.audit.record(
            principal.subject or "anonymous",
            "submit",
            created,
            details={"bulk": True, "task_types": types[:20]},
        )
    return Response(
        BulkSubmitted(results=results).model_dump_json(),
        status_code=_status({r.outcome for r in results}),
        media_type="application/json",
    )


def _names_another_user(principal: Principal, requested: str | None) -> bool:
    """Whether an item names a user other than the caller, which only an admin may."""
    return requested is not None and requested != principal.subject and not principal.is_admin
