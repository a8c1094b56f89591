"""The DLQ consumer: moves every dead message into the store, then acks it.

Runs in the worker, manual ack. The record is written before the ack, so a worker killed
in between leaves the message in the queue, and its redelivery finds the record already
there (the duplicate only counts ``times_seen``).

The task a message names is marked DEAD_LETTER only when the message is the task's own
current one (it decodes with the platform codec; its type, attempt, generation and priority
are the task's) and the task waits to run that attempt, has FAILED it, or runs it under a
lapsed lease — a message the quorum queue's delivery limit dead-lettered while its task
looked runnable, say. A message-level fault (a malformed message, a stale or duplicate copy)
never changes a task that runs under a live lease, waits for its own message, or has ended.

A message that cannot be stored is held and tried again with backoff. While the store does
not answer (``ping``) that goes on without limit (the message goes back to the queue after
``outage_hold`` seconds, so the broker's consumer timeout never fires); once the store answers
and still refuses it ``max_attempts`` times, it is parked (``parking.py``) and acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from taskplatform.deadletters.capture import dead_letter_from, own_message
from taskplatform.deadletters.parking import parked_copy, returned_copy
from taskplatform.errors import StoreError
from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskDeadLettered
from taskplatform.logsetup import printable
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.metrics import Metrics
from taskplatform.models import RUNNABLE, BackgroundTask, DeadLetter, TaskMessage, TaskStatus, utcnow
from taskplatform.store.deadletters import UpsertOutcome
from taskplatform.store.ports import DeadLetters, StoreClock, StoreLifecycle, TaskReads

log = logging.getLogger(__name__)

#: Why a message is parked (the ``reason`` label of ``taskplatform_dead_letters_parked_total``).
PARK_STORE_REFUSED = "store-refused"  # the store answers but keeps refusing the write
PARK_CAPTURE_FAILED = "capture-failed"  # anything else went wrong turning it into a record


class RawPublisher(Protocol):
    """What parking needs of the publisher: a confirmed, mandatory publish."""

    async def publish_raw(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, what: str
    ) -> None: ...


def is_current_message(task: BackgroundTask, message: TaskMessage, *, now: datetime | None = None) -> bool:
    """``message`` is ``task``'s own current message, and the task is not running it under a
    live lease (as of ``now``, the store's clock): the only dead message that may mark the task
    DEAD_LETTER."""
    if (message.task_type, message.attempt, message.generation, message.priority) != (
        task.task_type,
        task.retry_count,
        task.replays,
        task.priority,
    ):
        return False
    if task.status in RUNNABLE or task.status is TaskStatus.FAILED:
        return True
    return (
        task.status is TaskStatus.RUNNING
        and not task.awaiting_children
        and task.lease_until is not None
        and task.lease_until < (now or utcnow())
    )


def is_uncounted_death(record: DeadLetter, outcome: UpsertOutcome, task: BackgroundTask | None) -> bool:
    """``record`` is a new death no ``TaskDeadLettered`` event counted: a dead message no task
    died with (malformed, naming no task or a task of another type, a stale copy). A task marked
    DEAD_LETTER was counted by the metrics observer when it was marked (by a worker, the reaper
    or this consumer); a message seen again (``DUPLICATE``, ``STALE``) is no new death."""
    if outcome not in (UpsertOutcome.CREATED, UpsertOutcome.REOPENED):
        return False
    return record.kind == "message" or task is None or task.status is not TaskStatus.DEAD_LETTER


class CaptureStore(StoreLifecycle, StoreClock, TaskReads, DeadLetters, Protocol):
    """What the consumer uses of the store: the task a message names, its dead letter, and
    whether the store answers (a refusal while it does counts as a try; an outage does not)."""


class DeadLetterConsumer:
    """Consumes ``tasks.dlq.queue`` into the store's dead letters."""

    def __init__(
        self,
        broker: BrokerConnection,
        queue: str,
        store: CaptureStore,
        bus: EventBus,
        *,
        node_id: str,
        publisher: RawPublisher | None = None,
        parking_queue: str | None = None,
        metrics: Metrics | None = None,
        prefetch: int = 16,
        store_backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_attempts: int = 5,
        outage_hold: float = 300.0,
    ) -> None:
        self._broker = broker
        self._queue_name = queue
        self._store = store
        self._bus = bus
        self._node_id = node_id
        self._publisher = publisher
        self._parking_queue = parking_queue
        self._metrics = metrics
        self._prefetch = prefetch
        self._store_backoff = store_backoff
        self._max_backoff = max(max_backoff, store_backoff)
        self._max_attempts = max(1, max_attempts)
        self._outage_hold = outage_hold
        self._channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._in_flight: set[asyncio.Task[object]] = set()
        self.captured = 0
        self.parked = 0
        #: Messages returned to the DLQ as copies after a store outage longer than the hold.
        self.handed_back = 0

    async def start(self) -> None:
        self._channel = await self._broker.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        queue = await self._channel.declare_queue(self._queue_name, passive=True)
        tag = await queue.consume(self._on_message, no_ack=False)
        self._consumer = (queue, tag)
        log.info("consuming dead letters from %s", self._queue_name)

    async def stop(self, grace: float = 5.0) -> None:
        if self._consumer is not None:
            queue, tag = self._consumer
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            self._consumer = None
        if self._in_flight:
            _done, late = await asyncio.wait(list(self._in_flight), timeout=grace)
            for task in late:  # held through a store outage: unacked, it goes back to the queue
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._in_flight.add(current)
        try:
            await self._settle(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dead letter %s not settled; it goes back to the queue", message.message_id)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            if current is not None:
                self._in_flight.discard(current)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        """Capture and ack; retry what fails (unbounded while the store is unreachable, at most
        ``max_attempts`` tries while it answers), then park what still fails."""
        loop = asyncio.get_running_loop()
        held_since = loop.time()
        refusals = 0
        backoff = self._store_backoff
        while True:
            try:
                await self.capture(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if await self._store.answers():
                    refusals += 1
                    log.warning(
                        "dead letter %s not stored (try %d of %d): %s: %s",
                        message.message_id,
                        refusals,
                        self._max_attempts,
                        type(exc).__name__,
                        exc,
                    )
                    if refusals >= self._max_attempts:
                        await self._park(message, exc, refusals)
                        return
                else:
                    log.warning(
                        "dead letter %s held: the store is unreachable (%s); not counted as a try",
                        message.message_id,
                        exc,
                    )
                    if loop.time() - held_since >= self._outage_hold:
                        await self._hand_back(message)
                        return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            await message.ack()
            self.captured += 1
            return

    async def _hand_back(self, message: AbstractIncomingMessage) -> None:
        """Return a message held through a long store outage to the DLQ without counting a
        delivery: a confirmed copy, then the ack. (A requeue counts; RabbitMQ 4's quorum queues
        drop a message returned 20 times when, like the DLQ, they have no dead-letter exchange
        of their own.) Only when the copy cannot be published is the delivery requeued."""
        if self._publisher is not None:
            try:
                await self._publisher.publish_raw(
                    "", self._queue_name, returned_copy(message), what=f"dead letter {message.message_id}"
                )
            except Exception as exc:
                log.warning("dead letter %s not handed back (%s); requeueing it", message.message_id, exc)
            else:
                await message.ack()
                self.handed_back += 1
                return
        await message.nack(requeue=True)

    async def _park(self, message: AbstractIncomingMessage, exc: Exception, attempts: int) -> None:
        """Publish ``message`` to the parking queue (confirmed), then ack it; if that cannot be
        done it goes back to the DLQ, to be tried again."""
        reason = PARK_STORE_REFUSED if isinstance(exc, StoreError) else PARK_CAPTURE_FAILED
        if self._publisher is None or not self._parking_queue:
            log.error("dead letter %s cannot be stored and there is no parking queue", message.message_id)
            await message.nack(requeue=True)
            return
        copy = parked_copy(message, reason=reason, detail=f"{type(exc).__name__}: {exc}", attempts=attempts)
        try:
            await self._publisher.publish_raw(
                "", self._parking_queue, copy, what=f"parked dead letter {message.message_id}"
            )
        except Exception as publish_error:
            log.error(
                "dead letter %s could not be parked (%s); it goes back to the DLQ",
                message.message_id,
                publish_error,
            )
            await message.nack(requeue=True)
            return
        await message.ack()
        self.parked += 1
        if self._metrics is not None:
            self._metrics.dead_letters_parked.labels(reason).inc()
        log.error(
            "dead letter %s parked in %s after %d tries (%s: %s); move it back with "
            "'taskplatform dlq unpark' once the cause is fixed",
            message.message_id,
            self._parking_queue,
            attempts,
            reason,
            exc,
        )

    async def capture(self, message: AbstractIncomingMessage) -> DeadLetter:
        """Store ``message`` as a dead letter (idempotent) and mark its task dead when the
        message is the task's own current one (``is_current_message``)."""
        draft = dead_letter_from(message, None)
        task = await self._store.get(draft.task_id) if draft.task_id else None
        own = own_message(message) if draft.kind == "task" else None
        if task is not None and own is not None and is_current_message(task, own, now=self._store.now()):
            task = await self._mark_dead(task, own, draft)
        record, outcome = await self._store.upsert_dead_letter(dead_letter_from(message, task))
        if self._metrics is not None and is_uncounted_death(record, outcome, task):
            self._metrics.count_dead_message(record.task_type, record.reason)
        # A new death is a WARNING naming the message and why it died; one seen before is INFO.
        new = outcome in (UpsertOutcome.CREATED, UpsertOutcome.REOPENED)
        log.log(
            logging.WARNING if new else logging.INFO,
            "dead letter %s (%s, %s, task %s, message %s): %s: %s",
            record.id,
            record.kind,
            record.reason,
            record.task_id,
            message.message_id,
            outcome.value,
            printable(record.error_info.message if record.error_info else record.reason, 500),
            extra={
                "dead_letter_id": record.id,
                "kind": record.kind,
                "reason": record.reason,
                "task_id": record.task_id,
                "message_id": message.message_id,
                "outcome": outcome.value,
            },
        )
        return record

    async def _mark_dead(self, task: BackgroundTask, own: TaskMessage, draft: DeadLetter) -> BackgroundTask:
        # A FAILED task keeps the error its attempt recorded (and its reason); a task whose
        # message the broker dead-lettered gets the broker's.
        error = task.error_info if task.status is TaskStatus.FAILED else None
        reason = error.reason if error is not None and error.reason else draft.reason
        event = TaskDeadLettered(
            task_id=task.id,
            task_type=task.task_type,
            origin=Origin.PLATFORM,
            # the store applies it only at this attempt, and never under a live lease
            attempt=own.attempt,
            node_id=self._node_id,
            reason=reason,
            error=None if error is not None else draft.error_info,
        )
        delivery = await self._bus.publish(event, task)
        if delivery.accepted and delivery.task is not None:
            log.warning("task %s marked DEAD_LETTER: its message was dead-lettered (%s)", task.id, reason)
            return delivery.task
        log.info("task %s not marked DEAD_LETTER: %s", task.id, delivery.rejected)
        return delivery.task or task
