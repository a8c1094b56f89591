"""Executables used by the tests. Calls are counted per task id, in this process."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from executors.summary import GenerateSummary
from taskplatform.errors import Cancelled, PermanentFailure
from taskplatform.models import utcnow
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.retry import RetryPolicy
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext


class NoopParams(BaseModel):
    value: int = 0
    sleep: float = 0.0


class NoopResult(BaseModel):
    value: int


class Noop(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Returns its input, optionally after sleeping; counts every execution."""

    task_type = "test_noop"
    Params = NoopParams
    Result = NoopResult
    calls: ClassVar[Counter[str]] = Counter()

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        type(self).calls[ctx.task_id] += 1
        if ctx.parameters.sleep:
            await asyncio.sleep(ctx.parameters.sleep)
        return NoopResult(value=ctx.parameters.value)


class Boom(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Always raises (a non-retryable error), after ``sleep`` seconds; counts every execution."""

    task_type = "test_boom"
    Params = NoopParams
    Result = NoopResult
    calls: ClassVar[Counter[str]] = Counter()

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        type(self).calls[ctx.task_id] += 1
        if ctx.parameters.sleep:
            await asyncio.sleep(ctx.parameters.sleep)
        raise ValueError(f"boom {ctx.parameters.value}")


class FlakyError(Exception):
    """Declared retryable by Flaky."""


class FlakyParams(BaseModel):
    fail_times: int = 0


class Flaky(BackgroundTaskExecutable[FlakyParams, NoopResult]):
    """Fails (retryably) the first ``fail_times`` attempts; records when each attempt started."""

    task_type = "test_flaky"
    Params = FlakyParams
    Result = NoopResult
    retryable_exceptions = (FlakyError,)
    retry_policy = RetryPolicy(max_attempts=4, initial_delay=1.0, exp_base=2.0, jitter=0.0)
    started: ClassVar[dict[str, list[float]]] = {}

    async def execute(self, ctx: TaskContext[FlakyParams]) -> NoopResult:
        starts = type(self).started.setdefault(ctx.task_id, [])
        starts.append(time.monotonic())
        if len(starts) <= ctx.parameters.fail_times:
            raise FlakyError(f"attempt {ctx.attempt} fails on purpose")
        return NoopResult(value=len(starts))


class ThriceParams(BaseModel):
    fail: bool = True


class FailsThrice(BackgroundTaskExecutable[ThriceParams, NoopResult]):
    """Three attempts (retried twice, at short delays), each failing retryably while ``fail``;
    a replay with ``{"fail": false}`` completes."""

    task_type = "test_fails_thrice"
    Params = ThriceParams
    Result = NoopResult
    retryable_exceptions = (FlakyError,)
    retry_policy = RetryPolicy(max_attempts=3, initial_delay=0.2, exp_base=1.0, jitter=0.0)

    async def execute(self, ctx: TaskContext[ThriceParams]) -> NoopResult:
        if ctx.parameters.fail:
            raise FlakyError(f"attempt {ctx.attempt} fails on purpose")
        return NoopResult(value=ctx.attempt)


class Slow(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Sleeps past its own timeout."""

    task_type = "test_slow"
    Params = NoopParams
    Result = NoopResult
    timeout = 0.3
    retry_policy = RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0)

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        await asyncio.sleep(ctx.parameters.sleep)
        return NoopResult(value=ctx.parameters.value)


class Cooperative(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Works until asked to stop, then stops by raising Cancelled."""

    task_type = "test_cooperative"
    Params = NoopParams
    Result = NoopResult
    observed: ClassVar[set[str]] = set()

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        for _ in range(400):
            if ctx.cancelled:
                type(self).observed.add(ctx.task_id)
                raise Cancelled("stopping as asked")
            await asyncio.sleep(0.05)
        return NoopResult(value=0)


class Stubborn(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Ignores cancellation requests; must be stopped from outside."""

    task_type = "test_stubborn"
    Params = NoopParams
    Result = NoopResult

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        await asyncio.sleep(30)
        return NoopResult(value=0)


class SideEffectParams(BaseModel):
    path: str
    sleep: float = 0.0


class SideEffect(BackgroundTaskExecutable[SideEffectParams, NoopResult]):
    """Appends one line per execution to a file (countable across processes), then sleeps."""

    task_type = "test_side_effect"
    Params = SideEffectParams
    Result = NoopResult

    async def execute(self, ctx: TaskContext[SideEffectParams]) -> NoopResult:
        with open(ctx.parameters.path, "a", encoding="utf-8") as out:  # noqa: ASYNC230  (tiny, test only)
            out.write(f"{ctx.task_id} {os.getpid()}\n")
        await asyncio.sleep(ctx.parameters.sleep)
        return NoopResult(value=os.getpid())


class FanoutParams(BaseModel):
    child_type: str = "test_noop"
    children: list[dict[str, Any]] = Field(default_factory=list)
    #: Keep running (cooperatively) after submitting, until cancelled.
    keep_running: bool = False
    #: Fail (retryably) once, after submitting, so the next attempt submits them again.
    fail_first_attempt: bool = False


class Fanout(BackgroundTaskExecutable[FanoutParams, NoopResult]):
    """Submits one child per entry of ``children``; optionally keeps running until cancelled."""

    task_type = "test_fanout"
    Params = FanoutParams
    Result = NoopResult
    retryable_exceptions = (FlakyError,)
    retry_policy = RetryPolicy(max_attempts=3, initial_delay=0.2, jitter=0.0)

    async def execute(self, ctx: TaskContext[FanoutParams]) -> NoopResult:
        ids = await ctx.submit_sub_tasks(ctx.parameters.child_type, ctx.parameters.children)
        if ctx.parameters.fail_first_attempt and ctx.attempt == 0:
            raise FlakyError("parent fails once after submitting its children")
        while ctx.parameters.keep_running:
            if ctx.cancelled:
                raise Cancelled("parent stopping as asked")
            await asyncio.sleep(0.05)
        return NoopResult(value=len(ids))


class ChattyParams(BaseModel):
    updates: int = 1000
    pause: float = 0.0


class Chatty(BackgroundTaskExecutable[ChattyParams, NoopResult]):
    """Reports progress ``updates`` times as fast as it can."""

    task_type = "test_chatty"
    Params = ChattyParams
    Result = NoopResult

    async def execute(self, ctx: TaskContext[ChattyParams]) -> NoopResult:
        n = ctx.parameters.updates
        for i in range(1, n + 1):
            await ctx.update_progress(Progress(percent=100 * i / n, message=f"step {i}"))
            await asyncio.sleep(ctx.parameters.pause)
        return NoopResult(value=n)


class FailingSummary(GenerateSummary):
    """``generate_summary`` whose texts starting with FAIL fail permanently (fault injection)."""

    async def execute(self, ctx: TaskContext[GenerateSummary.Params]) -> GenerateSummary.Result:
        if ctx.parameters.text.startswith("FAIL"):
            raise PermanentFailure("this item is made to fail")
        return await super().execute(ctx)


class Picky(BackgroundTaskExecutable[NoopParams, NoopResult]):
    """Fails permanently on a negative value (bad parameters), and while ``failing`` is set."""

    task_type = "test_picky"
    Params = NoopParams
    Result = NoopResult
    failing: ClassVar[bool] = False

    async def execute(self, ctx: TaskContext[NoopParams]) -> NoopResult:
        if ctx.parameters.value < 0:
            raise PermanentFailure(f"value must not be negative, got {ctx.parameters.value}")
        if type(self).failing:
            raise PermanentFailure("the downstream service is down")
        return NoopResult(value=ctx.parameters.value)


class PacedResult(BaseModel):
    pid: int
    #: When ``execute`` started, epoch seconds.
    started: float
    #: How long the worker held the delivery that runs this attempt before ``execute`` started.
    held: float


class Paced(BackgroundTaskExecutable[NoopParams, PacedResult]):
    """Limited to 20 starts a second (all workers together); reports when it started and how
    long its message was held in the worker first."""

    task_type = "test_paced"
    Params = NoopParams
    Result = PacedResult
    rate_limits = (RateLimit("20/s"),)

    async def execute(self, ctx: TaskContext[NoopParams]) -> PacedResult:
        now = utcnow()
        held = (now - ctx.received_at).total_seconds()
        return PacedResult(pid=os.getpid(), started=now.timestamp(), held=held)


class PacedPerUser(Paced):
    """Limited to 10 starts a second per user."""

    task_type = "test_paced_user"
    rate_limits = (RateLimit("10/s", per="user"),)


class PacedSlowly(Paced):
    """Limited to one start every 2 s: most waits exceed the hold and go round the delay path."""

    task_type = "test_paced_slowly"
    rate_limits = (RateLimit("30/m"),)


class TextResult(BaseModel):
    text: str
    nested: dict[str, Any] | None = None


class Unstorable(BackgroundTaskExecutable[NoopParams, TextResult]):
    """Returns what no store keeps as it is: text with a NUL, or (``value`` 1) a result nested 300
    levels deep; counts every execution."""

    task_type = "test_unstorable"
    Params = NoopParams
    Result = TextResult
    calls: ClassVar[Counter[str]] = Counter()

    async def execute(self, ctx: TaskContext[NoopParams]) -> TextResult:
        type(self).calls[ctx.task_id] += 1
        if ctx.parameters.value == 1:
            deep: dict[str, Any] = {}
            for _ in range(300):
                deep = {"d": deep}
            return TextResult(text="deep", nested=deep)
        return TextResult(text="before\x00after")


EXECUTABLES = [
    Noop,
    Unstorable,
    Boom,
    Flaky,
    FailsThrice,
    Slow,
    Cooperative,
    Stubborn,
    SideEffect,
    Fanout,
    Chatty,
    Picky,
    Paced,
    PacedPerUser,
    PacedSlowly,
]
