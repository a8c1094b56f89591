"""The one settlement point: every ack, nack, reject and republish of a task delivery is made here.

The consumer and the claimer ask the ``Settler``; nothing else touches a delivery. An attempt's
outcome is recorded first (``EventRecorder``: events through the bus, whose state aggregator
writes the store), then the broker is told. A crash between the two leaves the message unacked,
so it is redelivered and the conditional store writes make the second delivery harmless.
See DEVELOPER_GUIDE.md, "Store before ack".
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from taskplatform.errors import PermanentFailure, StoreError, StoreRefused
from taskplatform.events.models import TaskDeadLettered, TaskRequeued
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.models import MAX_PRIORITY, RUNNABLE, BackgroundTask, ErrorInfo
from taskplatform.models.message import AwaitOwner, TaskMessage
from taskplatform.retry import RetryPolicy
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.delivery import channel_gone, dead_letter_copy, settle_delivery
from taskplatform.worker.outcomes import (
    Action,
    Decision,
    Failed,
    Outcome,
    Succeeded,
    decide,
    events_for,
    started_event,
)
from taskplatform.worker.recording import EventRecorder
from taskplatform.worker.settlement_log import log_dead_letter, log_failure, log_given_back

# The outcome types and the policy are re-exported for existing imports.
__all__ = ["Action", "Decision", "Failed", "Outcome", "Settler", "Succeeded", "channel_gone", "decide"]

log = logging.getLogger(__name__)


class Settler:
    """Applies decisions: the outcome recorded first, then the delivery acked, nacked or replaced."""

    def __init__(self, recorder: EventRecorder, publisher: TaskPublisher, config: WorkerConfig) -> None:
        self._recorder = recorder
        self._publisher = publisher
        self._node_id = config.node_id
        self._dlx = config.dead_letter_exchange
        self._backoff = config.store_backoff

    @property
    def recorder(self) -> EventRecorder:
        return self._recorder

    @property
    def publisher(self) -> TaskPublisher:
        return self._publisher

    # ------------------------------------------------------------ an attempt's life
    async def start(self, message: AbstractIncomingMessage, task: BackgroundTask) -> bool:
        """Record that the claimed attempt starts; when that cannot be recorded within the store
        outage hold, hand the delivery back (it runs again later) and return False."""
        try:
            await self._recorder.record(started_event(task, node_id=self._node_id), task)
        except StoreError:
            await self.give_back_unrecorded(message, task, "its start could not be recorded")
            return False
        return True

    async def settle_attempt(
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
    ) -> bool:
        """Settle a finished attempt, whatever the store does. Returns False when its outcome could
        not be recorded within the store outage hold (the delivery is handed back to run again).

        An outcome the store answers but refuses (a value it cannot store) fails the attempt for
        good instead: handing it back would run it again and again, uncounted. If not even that
        failure can be stored, the delivery is requeued, which counts toward the delivery limit.
        """
        try:
            await self.settle(
                message,
                task,
                outcome,
                policy=policy,
                retryable=retryable,
                non_retryable=non_retryable,
                children=children,
                progress=progress,
            )
        except StoreRefused as exc:
            log.error(
                "task %s attempt %d: the store refuses its outcome (%s)", task.id, task.retry_count, exc
            )
            refused = Failed(PermanentFailure(f"the attempt's outcome could not be stored: {exc}"), "")
            try:
                await self.settle(message, task, refused, policy=policy, children=children)
            except StoreError:
                await self.requeue(message)
        except StoreError:
            await self.give_back_unrecorded(message, task, "its outcome could not be recorded")
            return False
        return True

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
        """Record the outcome of ``task``'s attempt, then settle ``message``; a StoreError after
        the hold is raised. ``progress`` is the attempt's last progress not written yet."""
        decision = decide(
            outcome,
            attempt=task.retry_count,
            policy=policy,
            retryable=retryable,
            non_retryable=non_retryable,
            children=children,
        )
        first, *rest = events_for(
            task,
            outcome,
            decision,
            node_id=self._node_id,
            children=children,
            progress=progress,
            outbox_hold_until=self._recorder.outbox_hold_until(),
        )
        delivery = await self._recorder.record(first, task)
        if not delivery.accepted:
            await self._not_recorded(message, task, decision, delivery.task)
            return decision
        log_failure(task, outcome, decision, node_id=self._node_id)  # once recorded: one line per attempt
        for event in rest:  # TaskDeadLettered after TaskFailed
            follow = await self._recorder.record(event, delivery.task)
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

    async def _publish_retry(self, task: BackgroundTask) -> None:
        """Publish the next attempt through the delay path; the outbox relay covers a failure."""
        try:
            await self._publisher.publish_task(task)
        except Exception as exc:
            log.warning("retry of task %s not published now (%s); the outbox relay will", task.id, exc)
            return
        await self._recorder.mark_retry_published(task)  # record_retry's hold

    # ------------------------------------------------------------ the broker side
    # Every ack, nack and reject of a task delivery goes through these. A delivery whose
    # channel is gone (the connection dropped) cannot be settled any more: the broker has put
    # it back in its queue already, and its redelivery is settled against what the store
    # holds then. That is not an error, and must not fail the attempt that tried.

    async def ack(self, message: AbstractIncomingMessage) -> bool:
        """Ack; False when the delivery's channel is gone (the broker returned it)."""
        return await settle_delivery(message, "ack", message.ack)

    async def requeue(self, message: AbstractIncomingMessage) -> bool:
        """Return the delivery to its queue (counts toward the queue's delivery limit)."""
        return await settle_delivery(message, "requeue", lambda: message.nack(requeue=True))

    async def to_dead_letter_queue(self, message: AbstractIncomingMessage) -> bool:
        """Reject without requeue: the queue's dead-letter exchange routes it to the DLQ."""
        return await settle_delivery(message, "dead-letter", lambda: message.nack(requeue=False))

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
            delivery = await self._recorder.record(event, task)
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
        log_given_back(task, why, hold=self._recorder.store_hold)
        await self.send_round(
            message,
            TaskMessage.for_task(task),
            why,
            not_before=None,
            await_owner=AwaitOwner.start(self._node_id, self._recorder.now()),
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
        log_dead_letter(message, reason, detail, task_id=task_id)
        try:
            await self._publisher.publish_raw(
                self._dlx,
                message.routing_key or "",
                dead_letter_copy(message, reason, detail),
                what=f"dead letter {message.message_id}",
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
            delivery = await self._recorder.record(event, None)
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
