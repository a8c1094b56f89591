"""``demo``: a task that succeeds, fails, fails a few times then succeeds, or sleeps — on request.

For trying the platform out: a retry, a dead letter and its replay, a task kept RUNNING (or,
behind it, QUEUED) long enough to ``PATCH`` or cancel it. ``taskplatform dev`` (``scripts/run``)
loads it; ``taskplatform worker`` and ``api`` only when ``TASKPLATFORM_EXECUTOR_MODULES`` names
``executors.demo``. Its tasks have a queue group of their own (``demo``), so a worker that does
not know the type never receives them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskplatform.errors import Cancelled, PermanentFailure
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext

Mode = Literal["succeed", "fail", "retry", "sleep"]

#: The parameters each mode reads besides ``mode`` and ``message``; any other is refused.
MODE_FIELDS: dict[str, frozenset[str]] = {
    "succeed": frozenset(),
    "fail": frozenset(),
    "retry": frozenset({"failures"}),
    "sleep": frozenset({"seconds"}),
}
#: ``failures`` of a ``retry`` and ``seconds`` of a ``sleep`` when not given.
DEFAULT_FAILURES = 1
DEFAULT_SECONDS = 60.0
#: Longest step of a sleep between two looks at ``ctx.cancelled`` and two progress reports.
SLEEP_STEP_SECONDS = 1.0


class DemoFailure(Exception):
    """A failure the demo raises on purpose in ``retry`` mode; declared retryable."""


class Demo(BackgroundTaskExecutable["Demo.Params", "Demo.Result"]):
    """Succeed, fail for good, fail ``failures`` attempts then succeed, or sleep ``seconds``."""

    task_type = "demo"
    queue = "demo"
    description = (
        "Demonstration task (taskplatform dev only): mode succeed, fail (dead letter at once), "
        "retry (fails `failures` attempts, then succeeds) or sleep (`seconds`, cancellable)."
    )
    retryable_exceptions = (DemoFailure,)

    class Params(BaseModel):
        """What the demo task does; only the fields of the chosen mode may be given."""

        model_config = ConfigDict(extra="forbid")

        mode: Mode = "succeed"
        #: ``retry``: attempts that fail before one succeeds (default 1). At or above the retry
        #: policy's attempts (``RETRY_MAX_ATTEMPTS``, 3) the task ends DEAD_LETTER, attempts exhausted.
        failures: int | None = Field(default=None, ge=0, le=100)
        #: ``sleep``: seconds the attempt runs (default 60; past ``TASK_TIMEOUT_SECONDS`` it times out).
        seconds: float | None = Field(default=None, ge=0, le=3600)
        #: Put into the result, or into the error of a failing attempt.
        message: str = Field(default="", max_length=1000)

        @model_validator(mode="after")
        def _fields_of_the_mode(self) -> Demo.Params:
            # Unused fields stay None (the stored parameters show only what the mode reads).
            stray = sorted(
                name
                for name in ("failures", "seconds")
                if name not in MODE_FIELDS[self.mode] and getattr(self, name) is not None
            )
            if stray:
                used = ", ".join(sorted(MODE_FIELDS[self.mode])) or "none"
                raise ValueError(
                    f"mode {self.mode!r} does not use {', '.join(stray)} (its parameters: {used})"
                )
            return self

    class Result(BaseModel):
        """What the attempt that succeeded did."""

        mode: Mode
        #: The attempt that succeeded, 0 for the first.
        attempt: int
        failed_attempts: int
        slept_seconds: float
        message: str

    async def execute(self, ctx: TaskContext[Demo.Params]) -> Demo.Result:
        """Do what ``mode`` asks."""
        params = ctx.parameters
        detail = f": {params.message}" if params.message else ""
        if params.mode == "fail":
            raise PermanentFailure(f"demo task failing on purpose{detail}")
        failures = DEFAULT_FAILURES if params.failures is None else params.failures
        if params.mode == "retry" and ctx.attempt < failures:
            raise DemoFailure(
                f"demo task failing attempt {ctx.attempt + 1} of the {failures} asked for{detail}"
            )
        seconds = DEFAULT_SECONDS if params.seconds is None else params.seconds
        slept = await _sleep(ctx, seconds) if params.mode == "sleep" else 0.0
        ctx.log_info("demo task succeeded", mode=params.mode, attempt=ctx.attempt)
        return Demo.Result(
            mode=params.mode,
            attempt=ctx.attempt,
            failed_attempts=failures if params.mode == "retry" else 0,
            slept_seconds=round(slept, 3),
            message=params.message,
        )


async def _sleep(ctx: TaskContext[Demo.Params], seconds: float) -> float:
    """Sleep ``seconds`` in steps, reporting progress; stop with Cancelled once cancelled."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if ctx.cancelled:
            raise Cancelled(f"demo task cancelled after {elapsed:.1f} of {seconds:g} s")
        await ctx.update_progress(
            Progress(
                percent=round(100 * elapsed / seconds, 1), message=f"slept {elapsed:.0f} of {seconds:g} s"
            )
        )
        await asyncio.sleep(min(SLEEP_STEP_SECONDS, seconds - elapsed))
    return time.monotonic() - started


EXECUTABLES = [Demo]
