"""Submissions per user: ``POST /api/v1/tasks`` answers 429 with ``Retry-After`` past the limit.

The limit is ``API_SUBMIT_RATE`` tasks with bursts of ``API_SUBMIT_BURST``, counted per caller:
the token's subject, or the client address when authentication is disabled (behind a proxy that
is the proxy's, so every client shares one limit). A submission is charged every task it will
create: itself plus the children its executable declares (``fan_out``), all at once or not at
all; children a running parent submits later are not charged again. A submission heavier than
the burst could never pass and answers 422. A refused request consumes nothing and stores and
publishes nothing. Unset, nothing is counted.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from pydantic import ValidationError

from taskplatform.api.auth import SubmitterDep
from taskplatform.api.deps import RuntimeDep
from taskplatform.api.errors import ErrorBody
from taskplatform.auth import Principal
from taskplatform.ratelimit.limiter import reserve_many
from taskplatform.runtime import Runtime
from taskplatform.tasks.executable import BackgroundTaskExecutable
from taskplatform.tasks.registry import ExecutableRegistry

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
    if principal.subject is not None:
        return f"submit:user:{principal.subject}"
    host = request.client.host if request.client else "unknown"
    return f"submit:address:{host}"


def retry_after(wait: float) -> int:
    """``Retry-After`` for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def submission_weight(body: Any, registry: ExecutableRegistry) -> int:
    """Tasks a submit body will create: 1 plus its executable's ``fan_out``.

    A body that is not a valid submission weighs 1 (it is refused later, and counts like any
    request). Parameters are validated here only for executables that declare a fan-out."""
    if not isinstance(body, dict):
        return 1
    task_type = body.get("task_type")
    if not isinstance(task_type, str) or task_type not in registry:
        return 1
    executable = registry.get(task_type)
    if not any("fan_out" in vars(k) for k in executable.__mro__ if k is not BackgroundTaskExecutable):
        return 1  # the base class's: no children, nothing to validate twice
    try:
        params = executable.Params.model_validate(body.get("parameters", {}))
    except ValidationError:
        return 1
    return 1 + max(0, executable.fan_out(params))


async def _body_of(request: Request) -> Any:
    """The request's JSON body, as FastAPI already parsed it (Starlette caches it); None if none."""
    try:
        return await request.json()
    except ValueError:  # not JSON: the route refuses it
        return None


async def limit_submissions(request: Request, runtime: RuntimeDep, principal: SubmitterDep) -> None:
    """Take the tasks a submission will create from the caller's limit, or refuse it: 429 with
    ``Retry-After`` when they are not available now, 422 when they exceed the burst."""
    settings = runtime.settings
    rate = settings.api_submit_rate
    if rate is None:
        return
    burst = settings.api_submit_burst
    weight = submission_weight(await _body_of(request), runtime.registry)
    if weight > burst:
        raise HTTPException(
            422,
            f"this submission would create {weight} tasks (1 plus {weight - 1} children), more than "
            f"the per-user burst of {burst} (API_SUBMIT_BURST) allows at once; split it into batches "
            f"of at most {burst - 1} items",
        )
    size = f"; this submission creates {weight} tasks" if weight > 1 else ""
    await charge(runtime, principal, request, weight, size)


async def charge(runtime: Runtime, principal: Principal, request: Request, weight: int, size: str) -> None:
    """Take ``weight`` tasks from the caller's submission limit now, or answer 429 with
    ``Retry-After`` (``size``: what the message says of the submission's size)."""
    rate = runtime.settings.api_submit_rate
    if rate is None:  # no limit set
        return
    burst = runtime.settings.api_submit_burst
    reservation = await reserve_many(
        runtime.submit_rate_limiter,
        submitter_key(principal, request),
        weight,
        interval=rate.interval,
        burst=burst,
        max_wait=0,
    )
    if not reservation.granted:
        seconds = retry_after(reservation.wait)
        raise HTTPException(
            429,
            f"too many submissions: at most {rate} per caller (bursts of {burst}){size}; "
            f"retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


SubmitRateLimit = Annotated[None, Depends(limit_submissions)]
