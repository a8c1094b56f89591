"""Retry policy and failure classification: which failures come back, and when."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import tenacity
from pydantic import ValidationError

from taskplatform.errors import TRANSIENT_ERRORS, Cancelled, PermanentFailure, Retry, StoreError, StoreRefused

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed task is tried again.

    ``max_attempts`` counts every attempt, the first included (1 = never retry). Delays grow
    exponentially from ``initial_delay`` by ``exp_base`` with up to ``jitter`` seconds of
    random jitter, capped at ``max_delay`` — tenacity's ``wait_exponential_jitter``.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    exp_base: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.5
    _wait: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.jitter < 0:
            raise ValueError("delays and jitter must not be negative")
        wait = tenacity.wait_exponential_jitter(
            multiplier=self.initial_delay, max=self.max_delay, exp_base=self.exp_base, jitter=self.jitter
        )
        object.__setattr__(self, "_wait", wait)

    def delay_after(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (0-based) failed."""
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = failed_attempt + 1
        return float(self._wait(state))

    def attempts_left(self, failed_attempt: int) -> bool:
        """Whether another attempt follows the failure of ``failed_attempt`` (0-based)."""
        return failed_attempt + 1 < self.max_attempts


class Verdict(str, Enum):
    """What a failure means for the task."""

    RETRY = "retry"
    FAIL = "fail"
    CANCEL = "cancel"


def classify(
    exc: BaseException,
    *,
    retryable: tuple[type[BaseException], ...] = (),
    non_retryable: tuple[type[BaseException], ...] = (),
) -> Verdict:
    """Classify a failure. The first matching rule wins:

    control signals (``Retry``, ``PermanentFailure``, ``Cancelled``); the executable's own
    ``non_retryable`` then ``retryable`` exception types; timeouts and transient
    infrastructure faults (retry); anything else fails: an unexpected exception is a bug that
    another attempt will not fix, and retrying it by default is how retry storms start.
    Declare ``retryable_exceptions = (Exception,)`` on an executable to retry everything.
    """
    if isinstance(exc, Retry):
        return Verdict.RETRY
    if isinstance(exc, PermanentFailure):
        return Verdict.FAIL
    if isinstance(exc, Cancelled):
        return Verdict.CANCEL
    if non_retryable and isinstance(exc, non_retryable):
        return Verdict.FAIL
    if retryable and isinstance(exc, retryable):
        return Verdict.RETRY
    if isinstance(exc, ValidationError):
        return Verdict.FAIL  # parameters that do not validate never will
    if isinstance(exc, (TimeoutError, *TRANSIENT_ERRORS)):
        return Verdict.RETRY
    return Verdict.FAIL


#: Failed tries of one store write, while the store answers, after which it is refused for good.
MAX_REFUSALS = 3


async def retry_store_call(
    call: Callable[[], Awaitable[T]],
    *,
    hold: float,
    answers: Callable[[], Awaitable[bool]] | None = None,
    max_refusals: int = MAX_REFUSALS,
    first_wait: float = 0.1,
    max_wait: float = 5.0,
) -> T:
    """Await ``call()`` until it does not raise StoreError, with exponential backoff, for up to
    ``hold`` seconds; then re-raise the last StoreError.

    ``answers`` tells an outage from a refusal: after each failure it is asked whether the store
    answers; a write that failed ``max_refusals`` times while it did is refused (a value the
    store will never take), and ``StoreRefused`` is raised at once instead of waiting out the hold.

    Written as tenacity's ``async for`` loop on purpose: handed a plain callable that returns
    a coroutine (a ``lambda``), ``AsyncRetrying.__call__`` takes it for a synchronous function,
    "succeeds" with the un-awaited coroutine and never retries.
    """
    refusals = 0

    async def outage(state: tenacity.RetryCallState) -> bool:
        nonlocal refusals
        exc = state.outcome.exception() if state.outcome is not None else None
        if not isinstance(exc, StoreError):
            return False
        if answers is not None and await answers():
            refusals += 1
            return refusals < max_refusals
        return True

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_before_delay(hold),
        wait=tenacity.wait_exponential_jitter(multiplier=first_wait, max=max_wait, jitter=first_wait),
        retry=outage,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await call()
    except StoreError as exc:
        if refusals >= max_refusals:
            raise StoreRefused(f"the store answers but refused the write {refusals} times: {exc}") from exc
        raise
    raise AssertionError("unreachable: tenacity re-raises the last StoreError")  # pragma: no cover
