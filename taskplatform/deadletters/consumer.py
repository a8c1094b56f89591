"""The DLQ consumer: moves every dead message into the store, then acks it.

Runs in the worker, manual ack. The record is written before the ack, so a worker killed
in between leaves the message in the queue, and its redelivery finds the record already
there (one record per task: the duplicate only counts ``times_seen``). The task the message
names is marked DEAD_LETTER when it was not already (a message the quorum queue's delivery
limit dead-lettered while its task still looked runnable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from taskplatform.deadletters.capture import dead_letter_from
from taskplatform.errors import StoreError
from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskDeadLettered
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.models import TERMINAL, BackgroundTask, DeadLetter, TaskStatus
from taskplatform.store.base import BaseTaskStore

log = logging.getLogger(__name__)


class DeadLetterConsumer:
    """Consumes ``tasks.dlq.queue`` into the store's dead letters."""

    def __init__(
        self,
        broker: BrokerConnection,
        queue: str,
        store: BaseTaskStore,
        bus: EventBus,
        *,
        node_id: str,
        prefetch: int = 16,
        store_backoff: float = 1.0,
    ) -> None:
        self._broker = broker
        self._queue_name = queue
        self._store = store
        self._bus = bus
        self._node_id = node_id
        self._prefetch = prefetch
        self._store_backoff = store_backoff
        self._channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._in_flight: set[asyncio.Task[object]] = set()
        self.captured = 0

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
            await asyncio.wait(list(self._in_flight), timeout=grace)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._in_flight.add(current)
        try:
            await self.capture(message)
            await message.ack()
            self.captured += 1
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            # Keep it in the DLQ: back off a little, then let it come round again.
            log.warning("dead letter %s not stored (%s); it stays in the queue", message.message_id, exc)
            await asyncio.sleep(self._store_backoff)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        except Exception:
            log.exception("dead letter %s could not be captured; it stays in the queue", message.message_id)
            await asyncio.sleep(self._store_backoff)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            if current is not None:
                self._in_flight.discard(current)

    async def capture(self, message: AbstractIncomingMessage) -> DeadLetter:
        """Store ``message`` as a dead letter (idempotent) and mark its task dead."""
        draft = dead_letter_from(message, None)
        task = await self._store.get(draft.task_id) if draft.task_id else None
        if task is not None and _still_alive(task, draft):
            task = await self._mark_dead(task, draft)
        record, outcome = await self._store.upsert_dead_letter(dead_letter_from(message, task))
        log.info(
            "dead letter %s (%s, task %s): %s",
            record.id,
            record.reason,
            record.task_id,
            outcome.value,
        )
        return record

    async def _mark_dead(self, task: BackgroundTask, draft: DeadLetter) -> BackgroundTask:
        event = TaskDeadLettered(
            task_id=task.id,
            task_type=task.task_type,
            origin=Origin.PLATFORM,
            attempt=task.retry_count,
            node_id=self._node_id,
            reason=draft.reason,
            error=draft.error_info,
        )
        delivery = await self._bus.publish(event, task)
        if delivery.accepted and delivery.task is not None:
            log.warning(
                "task %s marked DEAD_LETTER: its message was dead-lettered (%s)", task.id, draft.reason
            )
            return delivery.task
        return delivery.task or task


def _still_alive(task: BackgroundTask, draft: DeadLetter) -> bool:
    """The dead message belongs to the task's current life, which has not ended yet."""
    return (
        draft.generation == task.replays
        and task.status not in TERMINAL
        and (draft.attempt is None or draft.attempt == task.retry_count)
    ) or (task.status is TaskStatus.FAILED and draft.generation == task.replays)
