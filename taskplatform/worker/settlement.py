"""The one place that turns an attempt's outcome into a state transition plus ack/nack.

The store is always written before the broker is told: a crash between the two leaves
the message unacked, so it is redelivered and the conditional store writes make the
second delivery harmless.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from taskplatform.batching import Coalescer
from taskplatform.errors import PermanentFailure, Retry, StoreError
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.models import RUNNABLE, BackgroundTask, ErrorInfo, TaskStatus, utcnow
from taskplatform.models.message import HEADER_DEAD_DETAIL, HEADER_DEAD_REASON
from taskplatform.retry import RetryPolicy, Verdict, classify
from taskplatform.store.base import BaseTaskStore, CompletionRequest

log = logging.getLogger(__name__)

#: How long the outbox leaves a retry to the settler's own delayed publish before the
#: relay takes over.
RETRY_PUBLISH_HOLD_SECONDS = 30.0

T = TypeVar("T")

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
) -> Decision:
    """Map an attempt's outcome to a decision. Pure: the whole settlement policy lives here."""
    if isinstance(outcome, Succeeded):
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
        return Decision(TaskStatus.DEAD_LETTER, Action.DEAD_LETTER, reason="attempts-exhausted")
    reason = "permanent-failure" if isinstance(error, PermanentFailure) else "non-retryable"
    return Decision(TaskStatus.DEAD_LETTER, Action.DEAD_LETTER, reason=reason)


def _is_ours(current: BackgroundTask | None, attempt: int, node_id: str, decision: Decision) -> bool:
    """The stored task shows this node's ``attempt`` settled as ``decision`` says."""
    expected = attempt + 1 if decision.status is TaskStatus.RETRYING else attempt
    return (
        current is not None
        and current.status is decision.status
        and current.execution_node_id == node_id
        and current.retry_count == expected
    )


def error_info(exc: BaseException, tb: str | None, *, attempt: int, node_id: str, reason: str) -> ErrorInfo:
    """An ErrorInfo with a trimmed traceback (the end, where the cause is)."""
    trimmed = tb[-TRACEBACK_LIMIT:] if tb else None
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc)[:2000],
        traceback=trimmed,
        attempt=attempt,
        node_id=node_id,
        reason=reason,
    )


class Settler:
    """Applies decisions: store write first, then ack or nack."""

    def __init__(
        self,
        store: BaseTaskStore,
        publisher: TaskPublisher,
        *,
        node_id: str,
        dead_letter_exchange: str,
        store_retry_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._node_id = node_id
        self._dlx = dead_letter_exchange
        self._store_retry_seconds = store_retry_seconds
        # Concurrent completions share one store statement (natural batching).
        self._completions: Coalescer[CompletionRequest, bool] = Coalescer(self._complete_batch)

    async def _complete_batch(self, items: Sequence[CompletionRequest]) -> list[bool]:
        done = await self._store.record_completions(items, node_id=self._node_id)
        return [item.task_id in done for item in items]

    async def _with_store_retries(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a store write; on StoreError retry with backoff for ``store_retry_seconds``.

        The first try runs without a retry controller: that is the common case and it is hot.
        """
        try:
            return await write()
        except StoreError as exc:
            log.warning("store write failed (%s); retrying for up to %.0fs", exc, self._store_retry_seconds)
        retrying = AsyncRetrying(
            stop=stop_after_delay(self._store_retry_seconds),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.1),
            retry=retry_if_exception_type(StoreError),
            reraise=True,
        )
        return await retrying(write)

    async def settle(
        self,
        message: AbstractIncomingMessage,
        task: BackgroundTask,
        outcome: Outcome,
        *,
        policy: RetryPolicy,
        retryable: tuple[type[BaseException], ...] = (),
        non_retryable: tuple[type[BaseException], ...] = (),
    ) -> Decision:
        """Record the outcome of ``task``'s attempt, then settle ``message``."""
        attempt = task.retry_count
        decision = decide(
            outcome, attempt=attempt, policy=policy, retryable=retryable, non_retryable=non_retryable
        )
        written = await self._with_store_retries(lambda: self._record(task, outcome, decision))
        if written is None:
            current = await self._with_store_retries(lambda: self._store.get(task.id))
            if _is_ours(current, attempt, self._node_id, decision):
                written = current  # our write landed; its reply was lost and the retry's guard failed
            elif current is not None and current.status in RUNNABLE and current.retry_count == attempt:
                # Our claim is gone (the store lost an unflushed commit in a crash): the task
                # waits to run at this attempt, so the message must come back, not be acked.
                log.warning("task %s: claim not found at settlement; requeueing the message", task.id)
                await message.nack(requeue=True)
                return decision
            else:
                # Someone else settled or took over this attempt (cancelled, lease taken over):
                # our outcome is stale and must not be applied to the broker either.
                log.warning(
                    "task %s: outcome %s not recorded (task moved on); acking", task.id, decision.status
                )
                await message.ack()
                return decision
        if decision.action is Action.RETRY_LATER and isinstance(written, BackgroundTask):
            await self._publish_retry(written)
        if decision.action is Action.DEAD_LETTER:
            await message.nack(requeue=False)
        else:
            await message.ack()
        return decision

    async def _record(
        self, task: BackgroundTask, outcome: Outcome, decision: Decision
    ) -> BackgroundTask | bool | None:
        """The store write for ``decision``: a truthy value if it applied, None if not."""
        attempt = task.retry_count
        if isinstance(outcome, Succeeded):
            result = outcome.result.model_dump(mode="json")
            done = await self._completions.submit(CompletionRequest(task.id, attempt, result))
            return True if done else None
        if decision.status is TaskStatus.CANCELLED:
            return await self._store.record_cancelled(task.id, node_id=self._node_id, attempt=attempt)
        info = error_info(
            outcome.error, outcome.traceback, attempt=attempt, node_id=self._node_id, reason=decision.reason
        )
        if decision.status is TaskStatus.RETRYING:
            now = utcnow()
            return await self._store.record_retry(
                task.id,
                node_id=self._node_id,
                attempt=attempt,
                error=info,
                next_attempt_at=now + timedelta(seconds=decision.delay),
                outbox_hold_until=now + timedelta(seconds=RETRY_PUBLISH_HOLD_SECONDS),
            )
        return await self._store.record_failure(
            task.id, node_id=self._node_id, attempt=attempt, error=info, status=decision.status
        )

    async def _publish_retry(self, task: BackgroundTask) -> None:
        """Publish the next attempt through the delay path; the outbox relay covers a failure."""
        try:
            await self._publisher.publish_task(task)
        except Exception as exc:
            log.warning("retry of task %s not published now (%s); the outbox relay will", task.id, exc)
            return
        try:
            await self._store.mark_published([task.id])
        except StoreError as exc:  # the relay republishes; the claim absorbs the duplicate
            log.warning("could not mark the retry of task %s published: %s", task.id, exc)

    async def skip(self, message: AbstractIncomingMessage, why: str) -> None:
        """Ack a delivery that must not run (duplicate, already finished, lost the claim)."""
        log.info("skipping message %s: %s", message.message_id, why)
        await message.ack()

    async def reject_malformed(self, message: AbstractIncomingMessage, reason: str, detail: str) -> None:
        """Send a message that cannot be processed to the DLQ with its reason, then ack it.

        The copy goes to the dead-letter exchange with ``x-dead-reason``/``x-dead-detail``
        headers and is confirmed before the original is acked, so the message is never
        lost. If that publish fails the original is rejected instead (the DLX still
        routes it to the DLQ, without the reason).
        """
        log.error("dead-lettering message %s: %s: %s", message.message_id, reason, detail)
        headers = dict(message.headers or {})
        headers[HEADER_DEAD_REASON] = reason
        headers[HEADER_DEAD_DETAIL] = detail[:1000]
        copy = aio_pika.Message(
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.type,
            app_id=message.app_id,
        )
        try:
            await self._publisher.publish_raw(
                self._dlx, message.routing_key or "", copy, what=f"dead letter {message.message_id}"
            )
        except Exception as exc:
            log.error("could not publish dead letter with reason (%s); rejecting the original", exc)
            await message.nack(requeue=False)
            return
        await message.ack()

    async def dead_letter_task(
        self, message: AbstractIncomingMessage, task_id: str, attempt: int, reason: str, detail: str
    ) -> None:
        """Mark a task that cannot run DEAD_LETTER, then move its message to the DLQ."""
        info = ErrorInfo(
            type="DeadLetter", message=detail, attempt=attempt, node_id=self._node_id, reason=reason
        )
        await self._with_store_retries(
            lambda: self._store.mark_dead_letter(task_id, error=info, attempt=attempt)
        )
        await self.reject_malformed(message, reason, detail)


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback as text."""
    return "".join(traceback.format_exception(exc))
