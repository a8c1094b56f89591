"""The in-process event bus: critical subscribers are awaited, observers are buffered.

A producer (the settler, the submitter, the reaper...) publishes an event and awaits the
critical subscribers, in order: the state aggregator first, which applies the event to the
store and may reject it. A failure of a critical subscriber propagates to the producer, so
the message behind the event is not acked. Observers (the external bridge, metrics) get
accepted events through a bounded buffer each, in batches, on their own asyncio task:
their errors are logged and counted, never propagated. A full buffer pushes back while its
observer keeps up some work (the producer waits for room: under overload the platform
slows to what its observers sustain instead of losing events); an observer stalled for
``stall_seconds`` (its broker is gone, say) loses its oldest events instead (counted), so it
can neither grow memory without bound nor hold the producers up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from taskplatform.events.models import TaskEvent
from taskplatform.models import BackgroundTask, ErrorInfo, SubTaskStatusSummary, TaskStatus
from taskplatform.models.task import JsonObject
from taskplatform.recent import RecentIds

log = logging.getLogger(__name__)

#: Seconds between two log lines about the same failing observer.
ERROR_LOG_INTERVAL = 10.0
#: Event ids remembered as passed to observers (a producer retries within seconds).
PASSED_REMEMBERED = 100_000


@dataclass(eq=False)
class Delivery:
    """One event on its way through the critical subscribers.

    ``task`` starts as the producer's copy of the task (may be None) and is replaced by the
    state after the event once the aggregator applied it. ``rejected`` names why the event
    did not take effect; a rejected event reaches no further subscriber.
    """

    event: TaskEvent
    task: BackgroundTask | None = None
    rejected: str | None = None
    #: The event had been applied before (same event id): a replay that changed nothing.
    duplicate: bool = False
    #: Work a critical subscriber wants done after observers got the event (they see a
    #: task's events in order even when this work publishes further events of that task).
    followups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def then(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` once the event is queued for observers; its failure fails the publish."""
        self.followups.append(work)

    @property
    def accepted(self) -> bool:
        return self.rejected is None

    def refuse(self, why: str) -> None:
        """The event does not take effect (``why`` is logged); no later subscriber sees it."""
        self.rejected = why


@dataclass(frozen=True, slots=True)
class TaskView:
    """What observers read of a task's state after an event: the fields the metrics observer
    and the external event bridge use, and nothing else.

    An observer that falls behind holds its buffered events for a while; holding this instead
    of the task's whole document (parameters, metadata, outbox and claim state, pydantic's own
    bookkeeping) makes a buffered event of a small task 1.2 kB instead of 3.0 kB, the event
    included (docs/benchmarks.md), and parameters of any size are not held at all: a burst held
    in the buffers leaves a smaller peak behind it.
    """

    id: str
    task_type: str
    status: TaskStatus
    user_id: str | None
    parent_task_id: str | None
    retry_count: int
    priority: int
    tags: tuple[str, ...]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    next_attempt_at: datetime | None
    version: int
    replays: int
    progress: JsonObject | None
    result: JsonObject | None
    error_info: ErrorInfo | None
    sub_task_status_summary: SubTaskStatusSummary | None

    @classmethod
    def of(cls, task: BackgroundTask) -> TaskView:
        return cls(
            id=task.id,
            task_type=task.task_type,
            status=task.status,
            user_id=task.user_id,
            parent_task_id=task.parent_task_id,
            retry_count=task.retry_count,
            priority=task.priority,
            tags=tuple(task.tags),
            created_at=task.created_at,
            started_at=task.started_at,
            completed_at=task.completed_at,
            next_attempt_at=task.next_attempt_at,
            version=task.version,
            replays=task.replays,
            progress=task.progress,
            result=task.result,
            error_info=task.error_info,
            sub_task_status_summary=task.sub_task_status_summary,
        )


@dataclass(frozen=True)
class Published:
    """What observers receive: an accepted event and the task's state after it. ``duplicate``:
    observers were given this event before (a producer retried after a follow-up failed);
    counting observers skip it."""

    event: TaskEvent
    task: TaskView | None
    duplicate: bool = False


class CriticalSubscriber(Protocol):
    """Awaited for every event; raising makes the producer's publish raise."""

    name: str

    async def handle(self, delivery: Delivery) -> None: ...


class Observer(Protocol):
    """Gets accepted events in batches, after the fact; must not block for long."""

    name: str

    async def observe(self, batch: Sequence[Published]) -> None: ...


@dataclass
class ObserverStats:
    """Counters of one observer."""

    delivered: int = 0
    errors: int = 0
    dropped: int = 0
    pending: int = 0


@dataclass(eq=False)
class _Pump:
    observer: Observer
    buffer: int
    batch: int
    queue: deque[Published] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    stats: ObserverStats = field(default_factory=ObserverStats)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    on_error: Callable[[str], None] | None = None
    on_drop: Callable[[str], None] | None = None
    last_error_log: float = float("-inf")
    errors_since_log: int = 0
    #: When the observer took the batch it is working on; None while it waits for events.
    busy_since: float | None = None

    def full(self) -> bool:
        return len(self.queue) >= self.buffer

    def stalled(self, after: float) -> bool:
        """Not running, or on one batch for longer than ``after``. An observer that was idle
        (however long) is not stalled: it is about to take a batch."""
        if self.task is None or self.task.done():
            return True
        return self.busy_since is not None and time.monotonic() - self.busy_since > after

    def offer(self, item: Published) -> None:
        if len(self.queue) >= self.buffer:
            self.queue.popleft()
            self.stats.dropped += 1
            if self.on_drop is not None:
                self.on_drop(self.observer.name)
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error(
                    "observer %s is %d events behind; dropped its oldest (%d dropped so far)",
                    self.observer.name,
                    self.buffer,
                    self.stats.dropped,
                )
        self.queue.append(item)
        self.idle.clear()
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            if not self.queue:
                self.idle.set()
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            items = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
            self.busy_since = time.monotonic()
            self.room.set()
            try:
                await self.observer.observe(items)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.errors += 1
                if self.on_error is not None:
                    self.on_error(self.observer.name)
                self._log_error(len(items))
            else:
                self.stats.delivered += len(items)
            finally:
                self.busy_since = None

    def _log_error(self, count: int) -> None:
        self.errors_since_log += 1
        now = time.monotonic()
        if now - self.last_error_log >= ERROR_LOG_INTERVAL:
            log.exception(
                "observer %s failed on a batch of %d event(s) (%d failure(s) since the last report)",
                self.observer.name,
                count,
                self.errors_since_log,
            )
            self.last_error_log = now
            self.errors_since_log = 0


class EventBus:
    """Dispatches lifecycle events to critical subscribers and observers."""

    def __init__(
        self,
        *,
        observer_buffer: int = 10_000,
        observer_batch: int = 256,
        stall_seconds: float = 2.0,
        on_observer_error: Callable[[str], None] | None = None,
        on_observer_drop: Callable[[str], None] | None = None,
    ) -> None:
        if observer_buffer < 1 or observer_batch < 1 or stall_seconds <= 0:
            raise ValueError("observer_buffer, observer_batch and stall_seconds must be positive")
        self._stall = stall_seconds
        self._critical: list[CriticalSubscriber] = []
        self._pumps: list[_Pump] = []
        self._buffer = observer_buffer
        self._batch = observer_batch
        self._on_error = on_observer_error  # called with the observer's name (metrics)
        self._on_drop = on_observer_drop  # likewise, per event dropped
        # Ids of the latest events passed to observers: a producer's retry of one is a duplicate
        # for them; an event whose first publish failed before observers saw it is not.
        self._passed = RecentIds(PASSED_REMEMBERED)
        self._started = False

    def add_critical(self, subscriber: CriticalSubscriber) -> None:
        """Await ``subscriber`` for every event, after the ones added before it."""
        self._critical.append(subscriber)

    def add_observer(
        self, observer: Observer, *, buffer: int | None = None, batch: int | None = None
    ) -> None:
        """Give ``observer`` every accepted event, through a buffer of ``buffer`` events."""
        pump = _Pump(
            observer,
            buffer or self._buffer,
            batch or self._batch,
            on_error=self._on_error,
            on_drop=self._on_drop,
        )
        pump.idle.set()
        self._pumps.append(pump)
        if self._started:
            pump.task = asyncio.create_task(pump.run(), name=f"observer-{observer.name}")

    def start(self) -> None:
        """Start the observers' tasks (events published before are kept for them)."""
        if self._started:
            return
        self._started = True
        for pump in self._pumps:
            pump.task = asyncio.create_task(pump.run(), name=f"observer-{pump.observer.name}")

    async def publish(self, event: TaskEvent, task: BackgroundTask | None = None) -> Delivery:
        """Run the critical subscribers on ``event``; if it is accepted, queue it for observers,
        then run the follow-up work the subscribers asked for.

        Raises whatever a critical subscriber or a follow-up raises (if a subscriber raised,
        nothing was queued).
        """
        delivery = Delivery(event, task)
        for subscriber in self._critical:
            await subscriber.handle(delivery)
            if delivery.rejected is not None:
                log.debug(
                    "event %s %s of task %s rejected: %s",
                    event.event_id,
                    event.name,
                    event.task_id,
                    delivery.rejected,
                )
                return delivery
        task = delivery.task
        item = Published(
            event,
            TaskView.of(task) if task is not None else None,
            duplicate=not self._passed.add(event.event_id),
        )
        for pump in self._pumps:
            while pump.full() and not pump.stalled(self._stall):
                # Back-pressure: wait for the observer to take a batch, or to stall.
                pump.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pump.room.wait(), self._stall)
            pump.offer(item)
        for work in delivery.followups:
            await work()
        return delivery

    def stats(self) -> dict[str, ObserverStats]:
        """Counters per observer name."""
        out: dict[str, ObserverStats] = {}
        for pump in self._pumps:
            pump.stats.pending = len(pump.queue)
            out[pump.observer.name] = pump.stats
        return out

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every observer has handled what it was given; False on timeout."""
        waits = [pump.idle.wait() for pump in self._pumps if pump.task is not None]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Give observers ``timeout`` seconds to finish their buffers, then stop them."""
        if not await self.drain(timeout):
            left = {p.observer.name: len(p.queue) for p in self._pumps if p.queue}
            log.warning("event observers stopped with events left undelivered: %s", left)
        for pump in self._pumps:
            if pump.task is not None:
                pump.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump.task
                pump.task = None
        self._started = False
