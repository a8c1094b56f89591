"""Submissions per caller, for every front door: ``API_SUBMIT_RATE`` tasks with bursts of
``API_SUBMIT_BURST``, counted per caller (the token's subject, or the client address when
authentication is disabled). A submission is charged every task it will create: itself plus the
children its executable declares (``fan_out``), all at once or not at all. One heavier than the
burst could never pass (``SubmissionTooHeavy``); one past the limit is refused with the wait
(``SubmissionsLimited``). A refused submission consumes nothing. Unset, nothing is counted.
HTTP answers 422 / 429 with ``Retry-After`` (``api/ratelimit.py``); gRPC ``INVALID_ARGUMENT`` /
``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskplatform.errors import TaskPlatformError
from taskplatform.ratelimit.limiter import reserve_many
from taskplatform.tasks.executable import BackgroundTaskExecutable
from taskplatform.tasks.registry import ExecutableRegistry

if TYPE_CHECKING:
    from taskplatform.runtime import Runtime


class SubmissionsLimited(TaskPlatformError):
    """The caller is past its submission limit; ``seconds``: whole seconds until it would pass."""

    def __init__(self, message: str, seconds: int) -> None:
        self.seconds = seconds
        super().__init__(message)


class SubmissionTooHeavy(TaskPlatformError):
    """A submission creates more tasks than the burst allows at once: it can never pass."""


def caller_key(subject: str | None, address: str | None) -> str:
    """The bucket a caller's submissions are counted in."""
    if subject is not None:
        return f"submit:user:{subject}"
    return f"submit:address:{address or 'unknown'}"


def retry_after(wait: float) -> int:
    """Whole seconds to wait, rounded up, at least 1."""
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


def check_weight(runtime: Runtime, weight: int) -> None:
    """SubmissionTooHeavy when ``weight`` tasks exceed the burst (only with a limit set)."""
    burst = runtime.settings.api_submit_burst
    if runtime.settings.api_submit_rate is not None and weight > burst:
        raise SubmissionTooHeavy(
            f"this submission would create {weight} tasks (1 plus {weight - 1} children), more than "
            f"the per-user burst of {burst} (API_SUBMIT_BURST) allows at once; split it into batches "
            f"of at most {burst - 1} items"
        )


async def charge_key(runtime: Runtime, key: str, weight: int, size: str) -> None:
    """Take ``weight`` tasks from bucket ``key`` now, or raise SubmissionsLimited (``size``: what
    the message says of the submission's size)."""
    rate = runtime.settings.api_submit_rate
    if rate is None:  # no limit set
        return
    burst = runtime.settings.api_submit_burst
    reservation = await reserve_many(
        runtime.submit_rate_limiter, key, weight, interval=rate.interval, burst=burst, max_wait=0
    )
    if not reservation.granted:
        seconds = retry_after(reservation.wait)
        raise SubmissionsLimited(
            f"too many submissions: at most {rate} per caller (bursts of {burst}){size}; "
            f"retry in {seconds} s",
            seconds,
        )
