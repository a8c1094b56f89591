"""Recording an attempt's lifecycle events: the worker's only way to change a task's state.

An event goes through the event bus, whose critical subscriber (the state aggregator) makes the
conditional store write; nothing here writes task state to the store itself. Store faults are
retried for the outage hold (``retry.retry_store_call``). The one direct store write is the
outbox mark of a retry this worker published itself. See DEVELOPER_GUIDE.md, "Store before ack".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from taskplatform.errors import StoreError
from taskplatform.events.bus import Delivery, EventBus
from taskplatform.events.models import TaskEvent
from taskplatform.models import BackgroundTask
from taskplatform.outbox import OWN_PUBLISH_HOLD_SECONDS
from taskplatform.retry import retry_store_call
from taskplatform.store.ports import Outbox, StoreLifecycle

#: The settlement logger: operators filter the worker's settlement lines (these included) on its name.
log = logging.getLogger("taskplatform.worker.settlement")

T = TypeVar("T")


class RecordingStore(StoreLifecycle, Outbox, Protocol):
    """What the recorder uses of the store: its clock, ``answers``, and the outbox mark."""


class EventRecorder:
    """Publishes lifecycle events on the bus (the store write), retrying while the store is out."""

    def __init__(self, store: RecordingStore, bus: EventBus, *, node_id: str, store_hold: float) -> None:
        self._store = store
        self._bus = bus
        self._node_id = node_id
        self.store_hold = store_hold

    @property
    def bus(self) -> EventBus:
        return self._bus

    def now(self) -> datetime:
        """Now on the store's clock (leases and outbox holds compare with it)."""
        return self._store.now()

    def outbox_hold_until(self) -> datetime:
        """Until when the outbox relay leaves a retry to this worker's own publish."""
        return self._store.now() + timedelta(seconds=OWN_PUBLISH_HOLD_SECONDS)

    async def record(self, event: TaskEvent, task: BackgroundTask | None) -> Delivery:
        """Publish ``event`` on the bus, retrying while the store is unavailable.

        A retry republishes the same event (same id), so an attempt whose write landed but
        whose reply was lost is recognised as applied, not rejected.
        """
        return await self._with_store_retries(lambda: self._bus.publish(event, task))

    async def mark_retry_published(self, task: BackgroundTask) -> None:
        """Release the outbox hold of a retry this worker has published (the relay skips it).
        A StoreError is logged, not raised: the relay republishes, the claim absorbs the copy."""
        try:
            await self._store.mark_published([task.id], owner=self._node_id)
        except StoreError as exc:
            log.warning("could not mark the retry of task %s published: %s", task.id, exc)

    async def _with_store_retries(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a store write; on StoreError retry with backoff for ``store_hold``, then raise the
        last StoreError. The first try runs without a retry controller: that is the hot case."""
        try:
            return await write()
        except StoreError as exc:
            log.warning("store write failed (%s); retrying for up to %.0fs", exc, self.store_hold)
        # A write failing while the store answers a ping is refused, not waiting for an outage to end.
        return await retry_store_call(write, hold=self.store_hold, answers=self._store.answers)
