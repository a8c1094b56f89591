"""The log lines settlement writes about failed attempts and dead-lettered messages.

They carry the task context as fields and keep the settlement logger's name, which operators
filter on. See DEVELOPER_GUIDE.md, "What is logged, and once".
"""

from __future__ import annotations

import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from taskplatform.logsetup import printable
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.worker.outcomes import Decision, Failed, Outcome

log = logging.getLogger("taskplatform.worker.settlement")

#: Longest error message a failure's log line quotes (the whole one is in the task's error_info).
LOGGED_MESSAGE_LIMIT = 500


def log_failure(task: BackgroundTask, outcome: Outcome, decision: Decision, *, node_id: str) -> None:
    """The log line of a failed attempt whose outcome is recorded: WARNING with the delay when
    it is retried, ERROR with the traceback when it ends the task (a dead letter: an unexpected
    exception, a permanent failure, attempts exhausted), INFO when it was cancelled. Every line
    carries the task context as fields; a retried attempt's traceback stays in its error_info."""
    if not isinstance(outcome, Failed):
        return
    error = outcome.error
    text = printable(str(error), LOGGED_MESSAGE_LIMIT)
    extra: dict[str, Any] = {
        "task_id": task.id,
        "task_type": task.task_type,
        "attempt": task.retry_count,
        "node_id": node_id,
        "error_type": type(error).__name__,
        "error_message": text,
        "reason": decision.reason,
    }
    if decision.status is TaskStatus.RETRYING:
        log.warning(
            "task %s (%s) attempt %d failed: %s: %s; retrying in %.1fs",
            task.id,
            task.task_type,
            task.retry_count,
            type(error).__name__,
            text,
            decision.delay,
            extra={**extra, "delay_seconds": decision.delay},
        )
    elif decision.status is TaskStatus.DEAD_LETTER:
        log.error(
            "task %s (%s) attempt %d failed for good (%s): %s: %s; dead-lettered",
            task.id,
            task.task_type,
            task.retry_count,
            decision.reason,
            type(error).__name__,
            text,
            extra=extra,
            # an exception built here, never raised (a refused outcome), has no traceback to show
            exc_info=error if error.__traceback__ is not None else None,
        )
    elif decision.status is TaskStatus.CANCELLED:
        log.info("task %s (%s) attempt %d cancelled", task.id, task.task_type, task.retry_count, extra=extra)


def log_dead_letter(
    message: AbstractIncomingMessage, reason: str, detail: str, *, task_id: str | None
) -> None:
    """The ERROR line of a message sent to the DLQ because it cannot be processed."""
    log.error(
        "dead-lettering message %s: %s: %s",
        message.message_id or f"(no message id, delivery {message.delivery_tag})",
        reason,
        printable(detail, LOGGED_MESSAGE_LIMIT),
        extra={
            "task_id": task_id,
            "message_id": message.message_id,
            "routing_key": message.routing_key,
            "reason": reason,
            "detail": printable(detail, LOGGED_MESSAGE_LIMIT),
        },
    )


def log_given_back(task: BackgroundTask, why: str, *, hold: float) -> None:
    """The WARNING line of an attempt handed back because the store stayed out for the hold."""
    log.warning(
        "task %s attempt %d: %s within the store outage hold (%.0fs); handing its message back, "
        "it runs again once this node's lease lapses",
        task.id,
        task.retry_count,
        why,
        hold,
    )
