"""The task store: one shared implementation of the operations over a backend's primitives.

Backends implement a handful of primitives (``primitives.StorePrimitives``: insert, fetch,
list, a guarded update, the parent roll-up, outbox claiming); every state-changing
operation is written once here (and in ``subtasks``, ``replay``) on top of the guarded update,
so all backends make the same decisions; dead-letter records work the same way over a
compare-and-set (``deadletters``). The port itself is ``protocol.TaskStore``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
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
from taskplatform.store.amend import AmendOperations
from taskplatform.store.deadletters import DeadLetterOperations
from taskplatform.store.deletion import DeleteOutcome, Deletion, DeletionOperations
from taskplatform.store.primitives import best_offset, owner_guard, with_event
from taskplatform.store.protocol import TaskStore
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

_RUNNING = frozenset({TaskStatus.RUNNING})
_WAITING = frozenset({TaskStatus.QUEUED, TaskStatus.RETRYING})


class BaseTaskStore(
    SubTaskOperations, ReplayOperations, AmendOperations, DeletionOperations, DeadLetterOperations
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

    # ------------------------------------------------------------ an attempt's life
    async def try_set_running(
        self,
        task_id: str,
        *,
        attempt: int,
        node_id: str,
        lease_until: datetime,
        priority: int | None = None,
        task_type: str | None = None,
        generation: int | None = None,
    ) -> BackgroundTask | None:
        """Claim the task for this attempt. Returns the document if this caller won.

        Wins when the task is QUEUED/RETRYING at this attempt, or RUNNING at this attempt
        under a lease that has lapsed (its previous owner died); with ``priority``, only while
        the task has that priority (the message of a task whose priority changed since is
        superseded by the one published with the change).
        """
        equals: dict[str, Any] = {"retry_count": attempt}
        if priority is not None:
            equals["priority"] = priority
        if task_type is not None:
            equals["task_type"] = task_type
        if generation is not None:
            equals["replays"] = generation
        # A lease is the store's time: whether it lapsed is the store's clock's call, not ours.
        guard = Guard(statuses=RUNNABLE, equals=equals, takeover_before=self.now())
        return await self._guarded_update(
            task_id, guard, self.running_changes(node_id, lease_until, utcnow())
        )

    async def try_set_running_many(
        self, claims: Sequence[ClaimRequest], *, node_id: str, lease_until: datetime
    ) -> dict[str, BackgroundTask]:
        """Claim several tasks at once; returns the documents of the claims this caller won.

        Backends override this with one statement; the default claims one by one.
        """
        won: dict[str, BackgroundTask] = {}
        for claim in claims:
            task = await self.try_set_running(
                claim.task_id,
                attempt=claim.attempt,
                node_id=node_id,
                lease_until=lease_until,
                priority=claim.priority,
                task_type=claim.task_type,
                generation=claim.generation,
            )
            if task is not None:
                won[task.id] = task
        return won

    async def record_completions(self, items: Sequence[CompletionRequest], *, node_id: str) -> dict[str, int]:
        """Record several completions; returns the ids whose completion was recorded, each
        with the task's version after it."""
        done: dict[str, int] = {}
        for item in items:
            task = await self.record_completion(
                item.task_id,
                node_id=node_id,
                attempt=item.attempt,
                result=item.result,
                event_id=item.event_id,
                progress=item.progress,
            )
            if task is not None:
                done[task.id] = task.version
        return done

    @staticmethod
    def running_changes(node_id: str, lease_until: datetime, now: datetime) -> dict[str, Any]:
        """The changes a successful claim makes.

        A claim also marks the outbox published: its message was evidently delivered.
        """
        return {
            "status": TaskStatus.RUNNING,
            "execution_node_id": node_id,
            "lease_until": lease_until,
            "last_attempt_at": now,
            "started_at": now,
            "next_attempt_at": None,
            "updated_at": now,
            "outbox.status": OutboxStatus.PUBLISHED.value,
            "outbox.lease_until": None,
            "outbox.lease_owner": None,
        }

    @staticmethod
    def completion_changes(now: datetime) -> dict[str, Any]:
        """The changes a recorded completion makes (besides the result)."""
        return {"status": TaskStatus.COMPLETED, "completed_at": now, "lease_until": None, "updated_at": now}

    async def renew_lease(
        self, task_id: str, *, node_id: str, attempt: int, lease_until: datetime
    ) -> BackgroundTask | None:
        """Extend the lease of a task this node runs at ``attempt``; None if it is no longer
        ours. The returned document tells whether cancellation was requested."""
        return await self._guarded_update(
            task_id, owner_guard(node_id, attempt), {"lease_until": lease_until}
        )

    async def record_progress(
        self,
        task_id: str,
        *,
        node_id: str,
        progress: Mapping[str, Any],
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """Store progress reported by the task's current owner (of ``attempt``, when given);
        returns the document after, or None if the task is not (or no longer) ours."""
        equals: dict[str, Any] = {"execution_node_id": node_id, "awaiting_children": False}
        if attempt is not None:
            equals["retry_count"] = attempt
        guard = Guard(statuses=_RUNNING, equals=equals)
        return await self._guarded_update(task_id, guard, with_event({"progress": dict(progress)}, event_id))

    async def record_completion(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        result: Mapping[str, Any] | None,
        event_id: str | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> BackgroundTask | None:
        """RUNNING -> COMPLETED with ``result`` (and the attempt's last ``progress``, when
        given), only for the owner of this attempt."""
        changes = self.completion_changes(utcnow())
        changes["result"] = dict(result) if result is not None else None
        if progress is not None:
            changes["progress"] = dict(progress)
        return await self._guarded_update(
            task_id, owner_guard(node_id, attempt), with_event(changes, event_id)
        )

    async def record_failure(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        error: ErrorInfo,
        status: TaskStatus,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """Record a failed attempt and move to ``status`` (FAILED or DEAD_LETTER).

        Only the owner of this attempt may do it (not once the task waits for its children),
        from a status that may legally precede ``status``.
        """
        if status not in (TaskStatus.FAILED, TaskStatus.DEAD_LETTER):
            raise ValueError(f"record_failure moves to FAILED or DEAD_LETTER, not {status}")
        guard = Guard(
            statuses=sources_of(status) & frozenset({TaskStatus.RUNNING, TaskStatus.FAILED}),
            equals={"execution_node_id": node_id, "retry_count": attempt, "awaiting_children": False},
        )
        changes = {
            "status": status,
            "error_info": error.model_dump(mode="json"),
            "completed_at": utcnow(),
            "lease_until": None,
        }
        return await self._guarded_update(task_id, guard, with_event(changes, event_id))

    async def record_retry(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        error: ErrorInfo,
        next_attempt_at: datetime,
        outbox_hold_until: datetime,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """RUNNING -> RETRYING for the owner of ``attempt``: the next attempt is ``attempt + 1``
        at ``next_attempt_at``.

        The outbox goes back to pending, held until ``outbox_hold_until`` so the caller can
        publish the delayed message itself; if it cannot, the relay publishes it after that.
        """
        changes = {
            "status": TaskStatus.RETRYING,
            "retry_count": attempt + 1,
            "next_attempt_at": next_attempt_at,
            "error_info": error.model_dump(mode="json"),
            "lease_until": None,
            "outbox.status": OutboxStatus.PENDING.value,
            "outbox.lease_until": outbox_hold_until,
            "outbox.lease_owner": node_id,
        }
        return await self._guarded_update(
            task_id, owner_guard(node_id, attempt), with_event(changes, event_id)
        )

    async def release_claim(
        self, task_id: str, *, node_id: str, attempt: int, event_id: str | None = None
    ) -> BackgroundTask | None:
        """RUNNING -> QUEUED at the same attempt: this node gives the task back unfinished
        (shutdown), so the next delivery claims it at once rather than after the lease."""
        changes = {"status": TaskStatus.QUEUED, "execution_node_id": None, "lease_until": None}
        return await self._guarded_update(
            task_id, owner_guard(node_id, attempt), with_event(changes, event_id)
        )

    async def record_cancelled(
        self, task_id: str, *, node_id: str, attempt: int, event_id: str | None = None
    ) -> BackgroundTask | None:
        """RUNNING -> CANCELLED, for the owner of ``attempt`` whose executable stopped on request."""
        changes = {"status": TaskStatus.CANCELLED, "completed_at": utcnow(), "lease_until": None}
        return await self._guarded_update(
            task_id, owner_guard(node_id, attempt), with_event(changes, event_id)
        )

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


def outbox_published_changes(now: datetime) -> dict[str, Any]:
    """The changes that mark an outbox entry published."""
    return {
        "outbox.status": OutboxStatus.PUBLISHED.value,
        "outbox.published_at": now,
        "outbox.lease_until": None,
        "outbox.lease_owner": None,
    }
