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
from taskplatform.api.errors import ErrorBody, error_response
from taskplatform.api.ratelimit import SUBMIT_RATE_LIMITED, charge, submission_weight
from taskplatform.api.routes import ERRORS
from taskplatform.api.schemas import (
    BulkItemResult,
    BulkOutcome,
    BulkSubmitItem,
    BulkSubmitRequest,
    BulkSubmitted,
)
from taskplatform.commands_bulk import BulkEntry, BulkForbidden
from taskplatform.submission import (
    MAX_BULK_TASKS,
    BulkProblem,
    BulkSubmissionRefused,
    SubmitRequest,
    Submitted,
)
from taskplatform.submission_bulk import schema_problems

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
    entries: list[BulkEntry] = []
    problems: list[BulkProblem] = []
    for index, raw in enumerate(body.tasks):
        try:
            item = BulkSubmitItem.model_validate(raw)
        except ValidationError as exc:
            problems.extend(schema_problems(index, exc))
            continue
        fields = {name: getattr(item, name) for name in SubmitRequest.model_fields}
        entries.append(BulkEntry(index, SubmitRequest.model_construct(**fields), item.idempotency_key))
    try:
        submitted = await commands.submit_bulk(entries, principal, problems=problems)
    except BulkForbidden as exc:
        return error_response(
            403,
            "forbidden",
            str(exc),
            [
                {
                    "index": f.index,
                    "loc": ["tasks", f.index, f.field],
                    **({"msg": f.why} if f.field == "task_type" else {}),
                }
                for f in exc.items
            ],
        )
    except BulkSubmissionRefused as exc:  # nothing was stored
        return _refusal(exc.problems)
    results = [
        BulkItemResult(index=index, task_id=s.task.id, status=s.task.status, outcome=_outcome(s))
        for index, s in enumerate(submitted)
    ]
    return Response(
        BulkSubmitted(results=results).model_dump_json(),
        status_code=_status({r.outcome for r in results}),
        media_type="application/json",
    )
