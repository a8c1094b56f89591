"""Submissions per user: ``POST /api/v1/tasks`` answers 429 with ``Retry-After`` past the limit.

The limit is ``API_SUBMIT_RATE`` with bursts of ``API_SUBMIT_BURST``, counted per caller: the
token's subject, or the client address when authentication is disabled (behind a proxy that
is the proxy's, so every client shares one limit). A refused request consumes nothing and
stores and publishes nothing. Unset, nothing is counted.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from taskplatform.api.auth import SubmitterDep
from taskplatform.api.deps import RuntimeDep
from taskplatform.api.errors import ErrorBody
from taskplatform.auth import Principal

#: The 429 of the submit route, for the OpenAPI document.
SUBMIT_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "Too many submissions by this caller (`API_SUBMIT_RATE`); nothing was stored",
        "headers": {
            "Retry-After": {
                "description": "Whole seconds until a submission would be accepted",
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


async def limit_submissions(request: Request, runtime: RuntimeDep, principal: SubmitterDep) -> None:
    """Take one submission from the caller's limit, or answer 429 with ``Retry-After``."""
    settings = runtime.settings
    rate = settings.api_submit_rate
    if rate is None:
        return
    reservation = await runtime.submit_rate_limiter.reserve(
        submitter_key(principal, request),
        interval=rate.interval,
        burst=settings.api_submit_burst,
        max_wait=0,
    )
    if not reservation.granted:
        seconds = retry_after(reservation.wait)
        raise HTTPException(
            429,
            f"too many submissions: at most {rate} per caller (bursts of {settings.api_submit_burst}); "
            f"retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


SubmitRateLimit = Annotated[None, Depends(limit_submissions)]
