"""Ending a task from outside its attempt: dead-lettering it, reaping a lost worker's attempt,
cancelling it. Guarded updates shared by every backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskplatform.models import (
    RUNNABLE,
    BackgroundTask,
    ErrorInfo,
    OutboxStatus,
    TaskStatus,
    sources_of,
    utcnow,
)
from taskplatform.store.primitives import StorePrimitives, with_event
from taskplatform.store.types import Guard

_RUNNING = frozenset({TaskStatus.RUNNING})
_WAITING = frozenset({TaskStatus.QUEUED, TaskStatus.RETRYING})


class EndingOperations(StorePrimitives):
    """``mark_dead_letter``, ``reap`` and cancellation (``LostWorkers``, ``Cancellation``)."""

    async def mark_dead_letter(
        self,
        task_id: str,
        *,
        error: ErrorInfo | None,
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """Move a task that will never run again to DEAD_LETTER.

        With ``attempt`` (a worker holding that attempt's message, or the reaper after
        ``reap`` failed it): only while the task waits to run at that attempt, has FAILED at
        it, or runs under a lapsed lease — never under a live owner. Without it (whoever
        finds a dead message later): from any status that may precede DEAD_LETTER.
        Finished tasks are left as they are. ``error`` replaces ``error_info`` when given;
        None keeps the error already recorded (a FAILED task's).
        """
        if attempt is None:
            guard = Guard(statuses=sources_of(TaskStatus.DEAD_LETTER))
        else:
            guard = Guard(
                statuses=RUNNABLE | {TaskStatus.FAILED},
                equals={"retry_count": attempt},
                takeover_before=self.now(),
            )
        changes: dict[str, Any] = {
            "status": TaskStatus.DEAD_LETTER,
            "completed_at": utcnow(),
            "lease_until": None,
            "awaiting_children": False,
        }
        if error is not None:
            changes["error_info"] = error.model_dump(mode="json")
        return await self._guarded_update(task_id, guard, with_event(changes, event_id))

    # ------------------------------------------------------------ lost workers
    async def reap(
        self,
        task_id: str,
        *,
        attempt: int,
        before: datetime,
        error: ErrorInfo,
        next_attempt_at: datetime | None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """Settle an attempt whose worker vanished (RUNNING, lease ended before ``before``, a time
        of the store's clock: ``now()`` less a grace).

        With ``next_attempt_at`` the attempt counts as failed and the next one is scheduled
        (RETRYING, outbox pending for the relay); without it the task moves to FAILED, and
        the caller dead-letters it with ``mark_dead_letter(attempt=attempt)`` (two steps,
        two lifecycle events). Guarded on the attempt and the lapsed lease, so a takeover or
        a late renewal wins; a parent waiting for its children has no lease and is never reaped.
        """
        guard = Guard(
            statuses=frozenset(),
            equals={"retry_count": attempt, "awaiting_children": False},
            takeover_before=before,
        )
        changes: dict[str, Any] = {
            "error_info": error.model_dump(mode="json"),
            "lease_until": None,
            "execution_node_id": None,  # the lost worker's late settlement must not look like ours
        }
        if next_attempt_at is None:
            changes.update(status=TaskStatus.FAILED, completed_at=utcnow())
        else:
            changes.update(
                {
                    "status": TaskStatus.RETRYING,
                    "retry_count": attempt + 1,
                    "next_attempt_at": next_attempt_at,
                    "outbox.status": OutboxStatus.PENDING.value,
                    "outbox.lease_until": None,
                    "outbox.lease_owner": None,
                }
            )
        return await self._guarded_update(task_id, guard, with_event(changes, event_id))

    # ------------------------------------------------------------ cancellation
    async def cancel_waiting(self, task_id: str, *, event_id: str | None = None) -> BackgroundTask | None:
        """Cancel a task that is not executing: QUEUED/RETRYING (its message is skipped when it
        arrives), or a parent waiting for its children. Returns the CANCELLED document, or
        None when the task is in neither state."""
        changes = with_event(
            {
                "status": TaskStatus.CANCELLED,
                "cancel_requested": True,
                "completed_at": utcnow(),
                "lease_until": None,
                "awaiting_children": False,
            },
            event_id,
        )
        done = await self._guarded_update(task_id, Guard(statuses=_WAITING), changes)
        if done is not None:
            return done
        parent = Guard(statuses=_RUNNING, equals={"awaiting_children": True})
        return await self._guarded_update(task_id, parent, changes)

    async def flag_cancel(self, task_id: str) -> BackgroundTask | None:
        """Ask the owner of a RUNNING attempt to stop (``cancel_requested``); None unless the
        task executes and was not asked already."""
        guard = Guard(statuses=_RUNNING, equals={"cancel_requested": False, "awaiting_children": False})
        return await self._guarded_update(task_id, guard, {"cancel_requested": True})

    async def request_cancel(self, task_id: str, *, event_id: str | None = None) -> BackgroundTask | None:
        """Cancel a task: QUEUED/RETRYING, or a parent waiting for its children -> CANCELLED at
        once (``cancel_waiting``, with ``event_id``); an executing attempt -> ``cancel_requested``
        (the worker stops it cooperatively). Returns the document after the request, unchanged
        if the task had already finished, or None if there is no such task."""
        done = await self.cancel_waiting(task_id, event_id=event_id)
        if done is not None:
            return done
        flagged = await self.flag_cancel(task_id)
        if flagged is not None:
            return flagged
        # It may have left RUNNING for RETRYING or QUEUED between the two updates: once more.
        done = await self.cancel_waiting(task_id, event_id=event_id)
        return done if done is not None else await self.get(task_id)
