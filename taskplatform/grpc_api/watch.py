"""``WatchTask``: a task's state now, then its lifecycle events as they happen, until it ends.

The events come from the broker, not this process's event bus: the workers that run a task
are other processes, and their bridges publish every accepted event to the events exchange.
One ``EventTap`` per server consumes it (a server-named, exclusive, auto-delete queue bound to
``task.#``, set up when the first watch starts) and hands each event to the watches of its
task. A watch subscribes before it reads the task, so no event falls between the read and the
subscription; an event whose ``sequence`` (the task's version after it) is not above what the
watch has sent already is skipped. The events are notifications, the store is the truth: a
watch that hears nothing for ``resync`` seconds (the bridge off, an event lost, its buffer
overrun) reads the task again and sends a snapshot if it changed, so it ends even without
events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from taskplatform.events.external import ExternalTaskEvent
from taskplatform.grpc_api import convert
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.models.status import TERMINAL

log = logging.getLogger(__name__)

#: Events one watch holds before it stops queueing them and reads the store instead.
WATCH_BUFFER = 256
#: Seconds a watch waits for an event before it reads the task again.
RESYNC_SECONDS = 2.0


class WatchesLimited(Exception):
    """The caller holds as many watches as one caller may (``GRPC_MAX_WATCHES_PER_CALLER``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"too many watches open: a caller may hold {limit} at once on this server; "
            "end one or wait for a task to finish"
        )


class WatchSlots:
    """Watches open per caller, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def held(self, caller: str) -> Iterator[None]:
        """One of ``caller``'s slots for the ``with`` block (WatchesLimited when none is left)."""
        if self._open[caller] >= self.limit:
            raise WatchesLimited(self.limit)
        self._open[caller] += 1
        try:
            yield
        finally:
            self._open[caller] -= 1
            if not self._open[caller]:
                del self._open[caller]

    def of(self, caller: str) -> int:
        return self._open.get(caller, 0)


class EventTap:
    """The events exchange, consumed once per process, fanned out to the watches by task id."""

    def __init__(self, broker: BrokerConnection, exchange: str) -> None:
        self._broker = broker
        self._exchange = exchange
        self._watches: dict[str, set[asyncio.Queue[ExternalTaskEvent | None]]] = defaultdict(set)
        self._queue: AbstractQueue | None = None
        self._channel: AbstractChannel | None = None
        self._starting = asyncio.Lock()
        self.received = 0

    async def _ensure(self) -> None:
        """Bind and consume the process's queue, once (a robust channel re-binds it after a
        reconnect)."""
        async with self._starting:
            if self._queue is not None:
                return
            channel = await self._broker.channel()
            try:
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                await queue.bind(self._exchange, routing_key="task.#")
                await queue.consume(self._on_message, no_ack=True)
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
            self._channel = channel
            self._queue = queue

    async def close(self) -> None:
        """Stop consuming (the queue goes with its channel: exclusive, auto-delete)."""
        async with self._starting:
            channel, self._channel, self._queue = self._channel, None, None
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.received += 1
        task_id = message.correlation_id
        watches = self._watches.get(task_id or "")
        if not watches:
            return
        try:
            event = ExternalTaskEvent.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning("an event on %s is not a task event (%s); ignored", self._exchange, exc.error_count())
            return
        for queue in watches:
            if queue.full():  # the watch fell behind: it reads the store instead
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribed(self, task_id: str) -> AsyncIterator[asyncio.Queue[ExternalTaskEvent | None]]:
        """The events of ``task_id`` from now on (None: some were dropped, read the store)."""
        await self._ensure()
        queue: asyncio.Queue[ExternalTaskEvent | None] = asyncio.Queue(WATCH_BUFFER)
        self._watches[task_id].add(queue)
        try:
            yield queue
        finally:
            self._watches[task_id].discard(queue)
            if not self._watches[task_id]:
                del self._watches[task_id]

    @property
    def watching(self) -> int:
        """Watches open now."""
        return sum(len(q) for q in self._watches.values())


def update_of(event: ExternalTaskEvent) -> pb.TaskUpdate:
    """An event as the stream sends it."""
    out = pb.TaskUpdate(
        event=event.type.value,
        status=convert.STATUS_TO_PB[TaskStatus(event.task.status)],
        sequence=event.sequence or 0,
    )
    convert.to_timestamp(event.occurred_at, out.occurred_at)
    if event.progress is not None:
        convert.to_struct(event.progress.model_dump(exclude_none=True), out.progress)
    if event.error is not None:
        out.error.CopyFrom(
            pb.ErrorInfo(
                type=event.error.type,
                message=event.error.message,
                attempt=event.error.attempt,
                **({"reason": event.error.reason} if event.error.reason is not None else {}),
            )
        )
    return out


def snapshot_of(task: BackgroundTask) -> pb.TaskUpdate:
    out = pb.TaskUpdate(event="snapshot", status=convert.STATUS_TO_PB[task.status], sequence=task.version)
    convert.to_timestamp(task.updated_at, out.occurred_at)
    out.task.CopyFrom(convert.task_message(task))
    return out


async def watch(
    tap: EventTap,
    task_id: str,
    read: Callable[[], Awaitable[BackgroundTask]],
    *,
    resync: float = RESYNC_SECONDS,
) -> AsyncIterator[pb.TaskUpdate]:
    """The updates of one task until it has ended (``read``: the task as the caller may see it;
    it raises when the caller may not)."""
    async with tap.subscribed(task_id) as events:
        task = await read()
        sent = task.version
        yield snapshot_of(task)
        while task.status not in TERMINAL:
            try:
                event = await asyncio.wait_for(events.get(), resync)
            except TimeoutError:
                event = None
            if event is not None:
                if event.sequence is not None and event.sequence <= sent:
                    continue  # already reflected in what was sent
                yield update_of(event)
                sent = event.sequence or sent
                if TaskStatus(event.task.status) not in TERMINAL:
                    continue
            latest = await read()  # an ending, a silence or an overrun: the store says where it is
            if latest.version > sent or latest.status in TERMINAL:
                yield snapshot_of(latest)
                sent = max(sent, latest.version)
            task = latest
