"""Submissions per user on HTTP: ``POST /api/v1/tasks`` (and the bulk route) answer 429 with
``Retry-After`` past the limit, 422 for a submission heavier than the burst. The rules, shared
with gRPC: ``taskplatform/ratelimit/submissions.py``. Behind a proxy, with authentication
disabled, the client address is the proxy's, so every client shares one limit.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from taskplatform.api.auth import SubmitterDep
from taskplatform.api.deps import RuntimeDep
from taskplatform.api.errors import ErrorBody
from taskplatform.auth import Principal
from taskplatform.ratelimit.submissions import (
    SubmissionsLimited,
    SubmissionTooHeavy,
    caller_key,
    charge_key,
    check_weight,
    retry_after,
    submission_weight,
)
from taskplatform.runtime import Runtime

__all__ = ["SUBMIT_RATE_LIMITED", "SubmitRateLimit", "charge", "retry_after", "submission_weight"]

#: The 429 of the submit route, for the OpenAPI document.
SUBMIT_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "Too many tasks submitted by this caller (`API_SUBMIT_RATE`; a batch counts "
        "its children too); nothing was stored",
        "headers": {
            "Retry-After": {
                "description": "Whole seconds until this submission would be accepted",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}


def submitter_key(principal: Principal, request: Request) -> str:
    """The bucket a caller's submissions are counted in."""
    return caller_key(principal.subject, request.client.host if request.client else None)


async def _body_of(request: Request) -> Any:
    """The request's JSON body, as FastAPI already parsed it (Starlette caches it); None if none."""
    try:
        return await request.json()
    except ValueError:  # not JSON: the route refuses it
        return None


async def limit_submissions(request: Request, runtime: RuntimeDep, principal: SubmitterDep) -> None:
    """Take the tasks a submission will create from the caller's limit, or refuse it: 429 with
    ``Retry-After`` when they are not available now, 422 when they exceed the burst."""
    if runtime.settings.api_submit_rate is None:
        return
    weight = submission_weight(await _body_of(request), runtime.registry)
    try:
        check_weight(runtime, weight)
    except SubmissionTooHeavy as exc:
        raise HTTPException(422, str(exc)) from None
    size = f"; this submission creates {weight} tasks" if weight > 1 else ""
    await charge(runtime, principal, request, weight, size)


async def charge(runtime: Runtime, principal: Principal, request: Request, weight: int, size: str) -> None:
    """Take ``weight`` tasks from the caller's submission limit now, or answer 429 with
    ``Retry-After`` (``size``: what the message says of the submission's size)."""
    if runtime.settings.api_submit_rate is None:  # no limit set
        return
    try:
        await charge_key(runtime, submitter_key(principal, request), weight, size)
    except SubmissionsLimited as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.seconds)}) from None


SubmitRateLimit = Annotated[None, Depends(limit_submissions)]
