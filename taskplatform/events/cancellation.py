"""Cancelling a task over the event bus: the one mechanism behind an operator's cancel
(``taskplatform/commands.py: TaskCommands.cancel``) and the platform's own cascades (the
aggregator's follow-ups: a cancelled parent cancels its children).

A waiting task (queued, retrying, or a parent waiting for its children) is CANCELLED at once by
a ``TaskCancelled`` event; a running one is flagged, and its worker stops it.
"""

from __future__ import annotations

from typing import Protocol

from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskCancelled
from taskplatform.models import TERMINAL, BackgroundTask, TaskStatus
from taskplatform.store.ports import Cancellation, TaskReads

#: Page size when cancelling a parent's children.
CASCADE_PAGE = 500


class CancelStore(TaskReads, Cancellation, Protocol):
    """What cancelling uses of the store (get, flag_cancel, child_pages)."""


class Canceller:
    """Publishes ``TaskCancelled`` events, or flags running tasks, and cascades to children."""

    def __init__(self, store: CancelStore, bus: EventBus, *, node_id: str) -> None:
        self._store = store
        self._bus = bus
        self._node_id = node_id

    async def request(self, task_id: str, *, origin: Origin) -> BackgroundTask | None:
        """Cancel a task: at once when it waits, else by asking its worker to stop it. Returns
        its state after the request, unchanged when it had finished, or None when there is no
        such task."""
        for _ in range(2):
            task = await self._store.get(task_id)
            if task is None:
                return None
            if task.status in TERMINAL:
                if task.status is TaskStatus.CANCELLED and _has_unfinished_children(task):
                    await self.cancel_children(task.id)  # resume a cascade cut short
                return task
            event = TaskCancelled(
                task_id=task.id,
                task_type=task.task_type,
                origin=origin,
                attempt=task.retry_count,
                node_id=self._node_id,
            )
            delivery = await self._bus.publish(event, task)
            if delivery.accepted:
                return delivery.task
            flagged = await self._store.flag_cancel(task_id)
            if flagged is not None:
                return flagged
            # It moved between the two updates (RUNNING -> RETRYING, say): once more.
        return await self._store.get(task_id)

    async def cancel_children(self, parent_id: str) -> None:
        """Cancel every unfinished child of a parent (the platform's own cascade)."""
        async for children in self._store.child_pages(parent_id, page_size=CASCADE_PAGE):
            for child in children:
                if child.status not in TERMINAL:
                    await self.request(child.id, origin=Origin.PLATFORM)


def _has_unfinished_children(task: BackgroundTask) -> bool:
    summary = task.sub_task_status_summary
    return summary is not None and summary.pending > 0
