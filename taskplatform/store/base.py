"""The task store: one shared implementation of the operations over a backend's primitives.

Backends implement a handful of primitives (``primitives.StorePrimitives``: insert, fetch,
list, a guarded update, the parent roll-up, outbox claiming); every state-changing
operation is written once (``attempts``, ``endings``, ``subtasks``, ``replay``, ``amend``,
``deletion``) on top of the guarded update, so all backends make the same decisions;
dead-letter records work the same way over a compare-and-set (``deadletters``). The port
itself is ``ports.TaskStore``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from taskplatform.models import BackgroundTask, OutboxStatus, utcnow
from taskplatform.store.amend import AmendOperations
from taskplatform.store.attempts import AttemptOperations
from taskplatform.store.deadletters import DeadLetterOperations
from taskplatform.store.deletion import DeleteOutcome, Deletion, DeletionOperations
from taskplatform.store.endings import EndingOperations
from taskplatform.store.ports import TaskStore
from taskplatform.store.primitives import best_offset
from taskplatform.store.replay import ReplayOperations
from taskplatform.store.subtasks import SubTaskOperations
from taskplatform.store.types import (
    MAX_PAGE_SIZE,
    ClaimRequest,
    CompletionRequest,
    Guard,
    InvalidCursorError,
    TaskFilter,
    TaskPage,
    check_page_size,
    decode_cursor,
    encode_cursor,
)

__all__ = [
    "MAX_PAGE_SIZE",
    "BaseTaskStore",
    "ClaimRequest",
    "CompletionRequest",
    "DeleteOutcome",
    "Deletion",
    "Guard",
    "InvalidCursorError",
    "TaskFilter",
    "TaskPage",
    "TaskStore",
    "check_page_size",
    "decode_cursor",
    "encode_cursor",
    "outbox_published_changes",
]

#: How long ``answers`` waits for a ping.
PING_TIMEOUT_SECONDS = 5.0


class BaseTaskStore(
    AttemptOperations,
    EndingOperations,
    SubTaskOperations,
    ReplayOperations,
    AmendOperations,
    DeletionOperations,
    DeadLetterOperations,
):
    """Shared operations over a backend's primitives (tasks, parents, replays, dead letters).

    Every status-changing operation takes an optional ``event_id``: the same conditional
    update then sets the document's ``last_event_id``.
    """

    #: The store's clock minus this process's (``now()``); measured by the backend, 0 until then.
    clock_offset: timedelta = timedelta(0)

    def now(self) -> datetime:
        """The store's clock: what leases, lapses and takeovers are written and compared with,
        so workers whose own clocks disagree still agree on every lease."""
        return utcnow() + self.clock_offset

    async def sync_clock(self) -> timedelta:
        """Measure the store server's clock against this process's and keep the difference as
        ``clock_offset`` (the best of a few readings); returns it. Done at ``open()``, and again
        whenever called (the runtime: every ``CLOCK_SYNC_SECONDS``). StoreError when the store
        cannot be reached (the last offset is kept)."""
        samples = await self._clock_samples()
        self.clock_offset = best_offset(samples) if samples else timedelta(0)
        return self.clock_offset

    async def create(self, task: BackgroundTask) -> None:
        """Insert one new document."""
        await self.create_many([task])

    async def answers(self) -> bool:
        """Whether the store answers a ping within ``PING_TIMEOUT_SECONDS``: False on any fault
        (a write failing while it answers is refused, not waiting for an outage to end)."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that arrives
            # as the ping ends, and a caller holding a message through an outage could not stop.
            async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                await self.ping()
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True


def outbox_published_changes(now: datetime) -> dict[str, Any]:
    """The changes that mark an outbox entry published."""
    return {
        "outbox.status": OutboxStatus.PUBLISHED.value,
        "outbox.published_at": now,
        "outbox.lease_until": None,
        "outbox.lease_owner": None,
    }
