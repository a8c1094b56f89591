"""The one place that turns an attempt's outcome into a state transition plus ack/nack.

The transition is published as lifecycle events; the bus's critical subscribers (the
state aggregator first) have written it to the store before the broker is told. A crash
between the two leaves the message unacked, so it is redelivered and the conditional
store writes make the second delivery harmless.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError
from pydantic import BaseModel

from taskplatform.errors import TRANSIENT_BROKER_ERRORS, PermanentFailure, Retry, StoreError
from taskplatform.events.bus import Delivery, EventBus
from taskplatform.events.models import (
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskRequeued,
    TaskRetrying,
    TaskWaiting,
)
from taskplatform.logsetup import printable
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.models import MAX_PRIORITY, RUNNABLE, BackgroundTask, ErrorInfo, TaskStatus, utcnow
from taskplatform.models.message import (
    HEADER_DEAD_AT,
    HEADER_DEAD_DETAIL,
    HEADER_DEAD_REASON,
    AwaitOwner,
    TaskMessage,
)
from taskplatform.outbox import OWN_PUBLISH_HOLD_SECONDS
from taskplatform.retry import RetryPolicy, Verdict, classify, retry_store_call
from taskplatform.store.base import BaseTaskStore
from taskplatform.store.deadletters import storable_text

log = logging.getLogger(__name__)


T = TypeVar("T")

TRACEBACK_LIMIT = 8000
#: Longest a store ping may take before the store counts as unreachable.
PING_TIMEOUT_SECONDS = 5.0

#: What acking or rejecting a delivery raises when its channel or connection went away
#: (RuntimeError: aiormq's "Connection closed" for a socket lost mid-call).
_CHANNEL_GONE: tuple[type[BaseException], ...] = (
    *TRANSIENT_BROKER_ERRORS,
    ChannelInvalidStateError,
    RuntimeError,
)


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
        return Decision(TaskStatus.DEAD_LETTER, Action.DEAD_LETTER, reason="attempts-exhausted")
    reason = "permanent-failure" if isinstance(error, PermanentFailure) else "non-retryable"
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


class Settler:
    """Applies decisions: events through the bus (the store write) first, then ack or nack."""

    def __init__(
        self,
        store: BaseTaskStore,
        publisher: TaskPublisher,
        bus: EventBus,
        *,
        node_id: str,
        dead_letter_exchange: str,
        store_retry_seconds: float = 30.0,
        backoff: float = 1.0,
    ) -> None:
        self._backoff = backoff
        self._store = store
        self._publisher = publisher
        self._bus = bus
        self._node_id = node_id
        self._dlx = dead_letter_exchange
        self._store_retry_seconds = store_retry_seconds

    @property
    def bus(self) -> EventBus:
        return self._bus

    async def _with_store_retries(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a store write; on StoreError retry with backoff for ``store_retry_seconds``, then
        raise the last StoreError.

        The first try runs without a retry controller: that is the common case and it is hot.
        """
        try:
            return await write()
        except StoreError as exc:
            log.warning("store write failed (%s); retrying for up to %.0fs", exc, self._store_retry_seconds)
        return await retry_store_call(write, hold=self._store_retry_seconds, answers=self._store_answers)

    async def _store_answers(self) -> bool:
        """Whether the store answers a ping: a write failing while it does is refused, not
        waiting for an outage to end."""
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True

    async def publish(self, event: TaskEvent, task: BackgroundTask | None) -> Delivery:
        """Publish ``event`` on the bus, retrying while the store is unavailable.

        A retry republishes the same event (same id), so an attempt whose write landed but
        whose reply was lost is recognised as applied, not rejected.
        """
        return await self._with_store_retries(lambda: self._bus.publish(event, task))

    async def settle(
        self,
        message: AbstractIncomingMessage,
        task: BackgroundTask,
        outcome: Outcome,
        *,
        policy: RetryPolicy,
        retryable: tuple[type[BaseException], ...] = (),
        non_retryable: tuple[type[BaseException], ...] = (),
        children: int = 0,
        progress: dict[str, Any] | None = None,
    ) -> Decision:
        """Record the outcome of ``task``'s attempt, then settle ``message``.

        ``progress`` is the attempt's last progress not written yet; a completion carries it.
        """
        decision = decide(
            outcome,
            attempt=task.retry_count,
            policy=policy,
            retryable=retryable,
            non_retryable=non_retryable,
            children=children,
        )
        first, *rest = self._events(task, outcome, decision, children, progress)
        delivery = await self.publish(first, task)
        if not delivery.accepted:
            await self._not_recorded(message, task, decision, delivery.task)
            return decision
        log_failure(task, outcome, decision, node_id=self._node_id)  # once recorded: one line per attempt
        for event in rest:  # TaskDeadLettered after TaskFailed
            follow = await self.publish(event, delivery.task)
            if not follow.accepted:
                log.warning("task %s: %s not recorded: %s", task.id, event.name, follow.rejected)
        if decision.action is Action.RETRY_LATER and delivery.task is not None:
            await self._publish_retry(delivery.task)
        if decision.action is Action.DEAD_LETTER:
            await self.to_dead_letter_queue(message)
        else:
            await self.ack(message)
        return decision

    async def _not_recorded(
        self,
        message: AbstractIncomingMessage,
        task: BackgroundTask,
        decision: Decision,
        current: BackgroundTask | None,
    ) -> None:
        if current is not None and current.status in RUNNABLE and current.retry_count == task.retry_count:
            # Our claim is gone (the store lost an unflushed commit in a crash): the task
            # waits to run at this attempt, so the message must come back, not be acked.
            log.warning("task %s: claim not found at settlement; requeueing the message", task.id)
            await self.requeue(message)
            return
        # Someone else settled or took over this attempt (cancelled, lease taken over):
        # our outcome is stale and must not be applied to the broker either.
        log.warning("task %s: outcome %s not recorded (task moved on); acking", task.id, decision.status)
        await self.ack(message)

    def _events(
        self,
        task: BackgroundTask,
        outcome: Outcome,
        decision: Decision,
        children: int,
        progress: dict[str, Any] | None = None,
    ) -> list[TaskEvent]:
        """The lifecycle events that record ``decision`` for ``task``'s attempt."""
        common: dict[str, Any] = {
            "task_id": task.id,
            "task_type": task.task_type,
            "attempt": task.retry_count,
            "node_id": self._node_id,
        }
        if isinstance(outcome, Succeeded):
            result = outcome.result.model_dump(mode="json")
            if decision.status is TaskStatus.RUNNING:
                return [TaskWaiting(**common, result=result, children=children)]
            return [TaskCompleted(**common, result=result, progress=progress)]
        if decision.status is TaskStatus.CANCELLED:
            return [TaskCancelled(**common)]
        info = error_info(
            outcome.error,
            outcome.traceback,
            attempt=task.retry_count,
            node_id=self._node_id,
            reason=decision.reason,
        )
        if decision.status is TaskStatus.RETRYING:
            now = utcnow()
            return [
                TaskRetrying(
                    **common,
                    error=info,
                    delay_seconds=decision.delay,
                    next_attempt_at=now + timedelta(seconds=decision.delay),
                    # An outbox lease: on the store's clock, which every relay compares with.
                    outbox_hold_until=self._store.now() + timedelta(seconds=OWN_PUBLISH_HOLD_SECONDS),
                )
            ]
        return [TaskFailed(**common, error=info), TaskDeadLettered(**common, reason=decision.reason)]

    async def _publish_retry(self, task: BackgroundTask) -> None:
        """Publish the next attempt through the delay path; the outbox relay covers a failure."""
        try:
            await self._publisher.publish_task(task)
        except Exception as exc:
            log.warning("retry of task %s not published now (%s); the outbox relay will", task.id, exc)
            return
        try:
            await self._store.mark_published([task.id], owner=self._node_id)  # record_retry's hold
        except StoreError as exc:  # the relay republishes; the claim absorbs the duplicate
            log.warning("could not mark the retry of task %s published: %s", task.id, exc)

    # ------------------------------------------------------------ the broker side
    # Every ack, nack and reject of a task delivery goes through these. A delivery whose
    # channel is gone (the connection dropped) cannot be settled any more: the broker has put
    # it back in its queue already, and its redelivery is settled against what the store
    # holds then. That is not an error, and must not fail the attempt that tried.

    async def ack(self, message: AbstractIncomingMessage) -> bool:
        """Ack; False when the delivery's channel is gone (the broker returned it)."""
        return await _settle_delivery(message, "ack", message.ack)

    async def requeue(self, message: AbstractIncomingMessage) -> bool:
        """Return the delivery to its queue (counts toward the queue's delivery limit)."""
        return await _settle_delivery(message, "requeue", lambda: message.nack(requeue=True))

    async def to_dead_letter_queue(self, message: AbstractIncomingMessage) -> bool:
        """Reject without requeue: the queue's dead-letter exchange routes it to the DLQ."""
        return await _settle_delivery(message, "dead-letter", lambda: message.nack(requeue=False))

    async def send_round(
        self,
        message: AbstractIncomingMessage,
        tm: TaskMessage,
        why: str,
        *,
        not_before: datetime | None,
        await_owner: AwaitOwner | None = None,
    ) -> bool:
        """Publish a fresh copy of a delivery that does not run now — through the delay path
        until ``not_before``, or straight back to its queue — then ack the delivery. No store
        write, and no requeue: a requeue would count toward the queue's delivery limit.

        ``await_owner`` marks the copy as standing in for a redelivery whose task another
        worker holds (``x-await-owner``): it keeps waiting for that lease instead of being
        skipped as a duplicate, and comes back on its group's highest priority level, ahead of
        any backlog, as a redelivery would have (behind a backlog it would lose the race to the
        reaper, and the takeover would cost the task an attempt). If the publish fails, the
        delivery is requeued after a backoff (the broker may be down). Returns whether the copy
        went out.
        """
        log.debug("sending task %s round: %s", tm.task_id, why)
        headers = await_owner.headers() if await_owner is not None else None
        route = MAX_PRIORITY if await_owner is not None else None
        try:
            if not_before is None:
                await self._publisher.publish(tm, extra_headers=headers, route_priority=route)
            else:
                await self._publisher.publish_not_before(
                    tm, not_before, extra_headers=headers, route_priority=route
                )
        except Exception as exc:
            log.warning("could not send task %s round (%s); returning it to the queue", tm.task_id, exc)
            await asyncio.sleep(self._backoff)
            await self.requeue(message)
            return False
        await self.ack(message)
        return True

    async def hand_back(self, message: AbstractIncomingMessage, task: BackgroundTask) -> bool:
        """Give an unfinished claimed attempt back (shutdown): release the claim (RUNNING ->
        QUEUED, same attempt), publish a fresh copy, then ack. When the claim cannot be released
        the delivery is requeued. Returns whether the claim was released."""
        event = TaskRequeued(
            task_id=task.id, task_type=task.task_type, attempt=task.retry_count, node_id=self._node_id
        )
        try:
            delivery = await self.publish(event, task)
            released = delivery.task if delivery.accepted else None
            if released is None:
                await self.requeue(message)
                return False
            await self._publisher.publish_task(released)
        except Exception:
            await self.requeue(message)
            raise
        await self.ack(message)
        log.info("task %s given back unfinished (attempt %d)", task.id, task.retry_count)
        return True

    async def give_back_unrecorded(
        self, message: AbstractIncomingMessage, task: BackgroundTask, why: str
    ) -> None:
        """The store stayed unreachable for the whole hold while this node held ``task``'s claim
        (its start or its outcome could not be written). Hand the delivery back without counting
        a delivery: a fresh copy that waits for this node's lease to lapse, then takes over."""
        log.warning(
            "task %s attempt %d: %s within the store outage hold (%.0fs); handing its message back, "
            "it runs again once this node's lease lapses",
            task.id,
            task.retry_count,
            why,
            self._store_retry_seconds,
        )
        tm = TaskMessage.for_task(task)
        await self.send_round(
            message, tm, why, not_before=None, await_owner=AwaitOwner.start(self._node_id, self._store.now())
        )

    async def skip(self, message: AbstractIncomingMessage, why: str) -> None:
        """Ack a delivery that must not run (duplicate, already finished, lost the claim)."""
        log.info("skipping message %s: %s", message.message_id, why)
        await self.ack(message)

    async def reject_malformed(
        self, message: AbstractIncomingMessage, reason: str, detail: str, *, task_id: str | None = None
    ) -> None:
        """Send a message that cannot be processed to the DLQ with its reason, then ack it.

        The copy goes to the dead-letter exchange with ``x-dead-reason``/``x-dead-detail``
        headers and is confirmed before the original is acked, so the message is never
        lost. If that publish fails the original is rejected instead (the DLX still
        routes it to the DLQ, without the reason).
        """
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
        headers = dict(message.headers or {})
        headers[HEADER_DEAD_REASON] = reason
        headers[HEADER_DEAD_DETAIL] = detail[:1000]
        headers[HEADER_DEAD_AT] = int(utcnow().timestamp() * 1000)
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
            await self.to_dead_letter_queue(message)
            return
        await self.ack(message)

    async def dead_letter_task(
        self,
        message: AbstractIncomingMessage,
        task_id: str,
        task_type: str,
        attempt: int,
        reason: str,
        detail: str,
    ) -> None:
        """Mark a task that cannot run DEAD_LETTER, then move its message to the DLQ."""
        info = ErrorInfo(
            type="DeadLetter", message=detail, attempt=attempt, node_id=self._node_id, reason=reason
        )
        event = TaskDeadLettered(
            task_id=task_id,
            task_type=task_type,
            attempt=attempt,
            node_id=self._node_id,
            reason=reason,
            error=info,
        )
        try:
            delivery = await self.publish(event, None)
        except StoreError as exc:
            # The message goes to the DLQ all the same; its consumer marks the task there.
            log.warning("task %s not marked DEAD_LETTER now (%s); its message goes to the DLQ", task_id, exc)
        else:
            if not delivery.accepted:
                log.info(
                    "task %s not marked DEAD_LETTER (%s); its message goes to the DLQ",
                    task_id,
                    delivery.rejected,
                )
        await self.reject_malformed(message, reason, detail, task_id=task_id)


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback as text."""
    return "".join(traceback.format_exception(exc))


async def _settle_delivery(
    message: AbstractIncomingMessage, what: str, action: Callable[[], Awaitable[None]]
) -> bool:
    if channel_gone(message):
        log.info("delivery %s: its channel is gone, no %s (the broker returned it)", message.message_id, what)
        return False
    try:
        await action()
    except _CHANNEL_GONE as exc:
        log.info("delivery %s: %s failed, its channel went away (%s)", message.message_id, what, exc)
        return False
    return True


def channel_gone(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is closed: the broker has returned the delivery
    to its queue and nothing can settle it any more."""
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:
        return True
