"""What an attempt ended with, and what that means for its task and its message.

``AttemptRunner`` produces an ``Outcome``; ``decide`` (pure: the whole settlement policy) maps it
to a ``Decision``; ``events_for`` names the lifecycle events that record the decision. The
settler (``worker/settlement.py``) applies them. See DEVELOPER_GUIDE.md, "Decisions".
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel

from taskplatform.errors import PermanentFailure, Retry
from taskplatform.events.models import (
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskRetrying,
    TaskStarted,
    TaskWaiting,
)
from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus, utcnow
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.retry import RetryPolicy, Verdict, classify
from taskplatform.store.deadletters import storable_text

TRACEBACK_LIMIT = 8000


@dataclass(frozen=True)
class Succeeded:
    """The attempt returned a result."""

    result: BaseModel


@dataclass(frozen=True)
class Failed:
    """The attempt raised."""

    error: BaseException
    traceback: str


Outcome = Succeeded | Failed


class Action(str, Enum):
    """What the broker is told about the message."""

    ACK = "ack"
    DEAD_LETTER = "dead_letter"  # nack(requeue=False): the DLX routes it to the DLQ
    RETRY_LATER = "retry_later"  # publish the next attempt through the delay path, then ack


@dataclass(frozen=True)
class Decision:
    """Target status, broker action and, for a retry, the delay before the next attempt."""

    status: TaskStatus
    action: Action
    delay: float = 0.0
    reason: str = ""


def decide(
    outcome: Outcome,
    *,
    attempt: int,
    policy: RetryPolicy,
    retryable: tuple[type[BaseException], ...] = (),
    non_retryable: tuple[type[BaseException], ...] = (),
    children: int = 0,
) -> Decision:
    """Map an attempt's outcome to a decision. Pure: the whole settlement policy lives here.

    A successful parent (``children`` > 0) stays RUNNING, waiting for its children.
    """
    if isinstance(outcome, Succeeded):
        if children > 0:
            return Decision(TaskStatus.RUNNING, Action.ACK, reason="awaiting-children")
        return Decision(TaskStatus.COMPLETED, Action.ACK)
    error = outcome.error
    verdict = classify(error, retryable=retryable, non_retryable=non_retryable)
    if verdict is Verdict.CANCEL:
        return Decision(TaskStatus.CANCELLED, Action.ACK, reason="cancelled")
    if verdict is Verdict.RETRY:
        if policy.attempts_left(attempt):
            asked = error.delay if isinstance(error, Retry) else None
            delay = asked if asked is not None else policy.delay_after(attempt)
            return Decision(TaskStatus.RETRYING, Action.RETRY_LATER, delay=max(0.0, delay), reason="retry")
        return Decision(
            TaskStatus.DEAD_LETTER, Action.DEAD_LETTER, reason=DeadLetterReason.ATTEMPTS_EXHAUSTED
        )
    reason = (
        DeadLetterReason.PERMANENT_FAILURE
        if isinstance(error, PermanentFailure)
        else DeadLetterReason.NON_RETRYABLE
    )
    return Decision(TaskStatus.DEAD_LETTER, Action.DEAD_LETTER, reason=reason)


def error_info(exc: BaseException, tb: str | None, *, attempt: int, node_id: str, reason: str) -> ErrorInfo:
    """An ErrorInfo with a trimmed traceback (the end, where the cause is)."""
    trimmed = storable_text(tb[-TRACEBACK_LIMIT:]) if tb else None
    return ErrorInfo(
        # An exception's text may hold NUL or lone surrogates, which no store takes as they are.
        type=storable_text(type(exc).__name__),
        message=storable_text(str(exc)[:2000]),
        traceback=trimmed,
        attempt=attempt,
        node_id=node_id,
        reason=reason,
    )


def events_for(
    task: BackgroundTask,
    outcome: Outcome,
    decision: Decision,
    *,
    node_id: str,
    children: int,
    progress: dict[str, Any] | None,
    outbox_hold_until: datetime,
) -> list[TaskEvent]:
    """The lifecycle events that record ``decision`` for ``task``'s attempt.

    ``outbox_hold_until`` is the retry's outbox lease (on the store's clock, which every relay
    compares with): the relay leaves the retry to this worker's own publish until then.
    """
    common: dict[str, Any] = {
        "task_id": task.id,
        "task_type": task.task_type,
        "attempt": task.retry_count,
        "node_id": node_id,
    }
    if isinstance(outcome, Succeeded):
        result = outcome.result.model_dump(mode="json")
        if decision.status is TaskStatus.RUNNING:
            return [TaskWaiting(**common, result=result, children=children)]
        return [TaskCompleted(**common, result=result, progress=progress)]
    if decision.status is TaskStatus.CANCELLED:
        return [TaskCancelled(**common)]
    info = error_info(
        outcome.error, outcome.traceback, attempt=task.retry_count, node_id=node_id, reason=decision.reason
    )
    if decision.status is TaskStatus.RETRYING:
        return [
            TaskRetrying(
                **common,
                error=info,
                delay_seconds=decision.delay,
                next_attempt_at=utcnow() + timedelta(seconds=decision.delay),
                outbox_hold_until=outbox_hold_until,
            )
        ]
    return [TaskFailed(**common, error=info), TaskDeadLettered(**common, reason=decision.reason)]


def started_event(task: BackgroundTask, *, node_id: str) -> TaskStarted:
    """The event that records the start of ``task``'s claimed attempt."""
    return TaskStarted(
        task_id=task.id,
        task_type=task.task_type,
        occurred_at=task.last_attempt_at or utcnow(),
        attempt=task.retry_count,
        node_id=node_id,
    )


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback as text."""
    return "".join(traceback.format_exception(exc))
