"""The task store port: one protocol, one shared implementation of the operations.

Backends implement a handful of primitives (insert, fetch, list, a guarded update,
outbox claiming); every state-changing operation is written once here on top of the
guarded update, so all backends make the same decisions.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from taskplatform.models import (
    RUNNABLE,
    BackgroundTask,
    ErrorInfo,
    OutboxStatus,
    TaskStatus,
    sources_of,
    utcnow,
)
from taskplatform.store.types import (
    MAX_PAGE_SIZE,
    ClaimRequest,
    CompletionRequest,
    Guard,
    InvalidCursorError,
    TaskFilter,
    TaskPage,
    decode_cursor,
    encode_cursor,
)

__all__ = [
    "MAX_PAGE_SIZE",
    "BaseTaskStore",
    "ClaimRequest",
    "CompletionRequest",
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


@runtime_checkable
class TaskStore(Protocol):
    """What the platform needs from durable task state. Contract: ``tests/store``."""

    url_scheme: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create(self, task: BackgroundTask) -> None: ...
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None: ...
    async def get(self, task_id: str) -> BackgroundTask | None: ...
    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage: ...
    async def count_by_status(self) -> dict[TaskStatus, int]: ...

    async def try_set_running(
        self, task_id: str, *, attempt: int, node_id: str, lease_until: datetime
    ) -> BackgroundTask | None: ...
    async def try_set_running_many(
        self, claims: Sequence[ClaimRequest], *, node_id: str, lease_until: datetime
    ) -> dict[str, BackgroundTask]: ...
    async def renew_lease(
        self, task_id: str, *, node_id: str, attempt: int, lease_until: datetime
    ) -> BackgroundTask | None: ...
    async def record_progress(self, task_id: str, *, node_id: str, progress: Mapping[str, Any]) -> bool: ...
    async def record_completions(self, items: Sequence[CompletionRequest], *, node_id: str) -> set[str]: ...
    async def record_completion(
        self, task_id: str, *, node_id: str, attempt: int, result: Mapping[str, Any] | None
    ) -> BackgroundTask | None: ...
    async def record_failure(
        self, task_id: str, *, node_id: str, attempt: int, error: ErrorInfo, status: TaskStatus
    ) -> BackgroundTask | None: ...

    async def mark_dead_letter(
        self, task_id: str, *, error: ErrorInfo, attempt: int | None = None
    ) -> BackgroundTask | None: ...
    async def record_retry(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        error: ErrorInfo,
        next_attempt_at: datetime,
        outbox_hold_until: datetime,
    ) -> BackgroundTask | None: ...
    async def record_cancelled(
        self, task_id: str, *, node_id: str, attempt: int
    ) -> BackgroundTask | None: ...

    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]: ...
    async def mark_published(self, task_ids: Sequence[str]) -> int: ...
    async def record_publish_failure(self, task_id: str, error: str) -> None: ...


class BaseTaskStore(ABC):
    """Shared operations over a backend's primitives."""

    url_scheme: str = ""

    # ------------------------------------------------------------ primitives
    @abstractmethod
    async def open(self) -> None:
        """Connect and make sure the schema/indexes exist."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    @abstractmethod
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        """Insert new documents; DuplicateTaskError if an id exists (nothing inserted)."""

    @abstractmethod
    async def get(self, task_id: str) -> BackgroundTask | None:
        """The document, or None."""

    @abstractmethod
    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """A page of documents, newest first."""

    @abstractmethod
    async def count_by_status(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (statuses with none are omitted)."""

    @abstractmethod
    async def _guarded_update(
        self, task_id: str, guard: Guard, changes: Mapping[str, Any]
    ) -> BackgroundTask | None:
        """Apply ``changes`` atomically if ``guard`` holds; bump version, set updated_at.

        ``changes`` keys are document field names (``outbox.<field>`` for outbox state);
        values are JSON-ready (models already dumped) except datetimes and enums.
        Returns the updated document, or None when the guard did not hold.
        """

    @abstractmethod
    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]:
        """Lease up to ``limit`` pending outbox entries created before ``created_before``
        whose lease is free or lapsed; returns them (leased to ``owner``)."""

    @abstractmethod
    async def mark_published(self, task_ids: Sequence[str]) -> int:
        """Mark the outbox of these tasks published; returns how many changed."""

    @abstractmethod
    async def record_publish_failure(self, task_id: str, error: str) -> None:
        """Count a failed publish attempt, keep the error and release any relay lease;
        the entry stays pending."""

    # ------------------------------------------------------------ operations
    async def create(self, task: BackgroundTask) -> None:
        """Insert one new document."""
        await self.create_many([task])

    async def try_set_running(
        self, task_id: str, *, attempt: int, node_id: str, lease_until: datetime
    ) -> BackgroundTask | None:
        """Claim the task for this attempt. Returns the document if this caller won.

        Wins when the task is QUEUED/RETRYING at this attempt, or RUNNING at this attempt
        under a lease that has lapsed (its previous owner died).
        """
        now = utcnow()
        guard = Guard(statuses=RUNNABLE, equals={"retry_count": attempt}, takeover_before=now)
        return await self._guarded_update(task_id, guard, self.running_changes(node_id, lease_until, now))

    async def try_set_running_many(
        self, claims: Sequence[ClaimRequest], *, node_id: str, lease_until: datetime
    ) -> dict[str, BackgroundTask]:
        """Claim several tasks at once; returns the documents of the claims this caller won.

        Backends override this with one statement; the default claims one by one.
        """
        won: dict[str, BackgroundTask] = {}
        for claim in claims:
            task = await self.try_set_running(
                claim.task_id, attempt=claim.attempt, node_id=node_id, lease_until=lease_until
            )
            if task is not None:
                won[task.id] = task
        return won

    async def record_completions(self, items: Sequence[CompletionRequest], *, node_id: str) -> set[str]:
        """Record several completions; returns the ids whose completion was recorded."""
        done: set[str] = set()
        for item in items:
            task = await self.record_completion(
                item.task_id, node_id=node_id, attempt=item.attempt, result=item.result
            )
            if task is not None:
                done.add(task.id)
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
        guard = _owner(node_id, attempt)
        return await self._guarded_update(task_id, guard, {"lease_until": lease_until})

    async def record_progress(self, task_id: str, *, node_id: str, progress: Mapping[str, Any]) -> bool:
        """Store progress reported by the task's current owner."""
        guard = Guard(statuses=frozenset({TaskStatus.RUNNING}), equals={"execution_node_id": node_id})
        return await self._guarded_update(task_id, guard, {"progress": dict(progress)}) is not None

    async def record_completion(
        self, task_id: str, *, node_id: str, attempt: int, result: Mapping[str, Any] | None
    ) -> BackgroundTask | None:
        """RUNNING -> COMPLETED with ``result``, only for the owner of this attempt."""
        guard = _owner(node_id, attempt)
        changes = self.completion_changes(utcnow())
        changes["result"] = dict(result) if result is not None else None
        return await self._guarded_update(task_id, guard, changes)

    async def record_failure(
        self, task_id: str, *, node_id: str, attempt: int, error: ErrorInfo, status: TaskStatus
    ) -> BackgroundTask | None:
        """Record a failed attempt and move to ``status`` (FAILED or DEAD_LETTER).

        Only the owner of this attempt may do it, from a status that may legally precede
        ``status``.
        """
        if status not in (TaskStatus.FAILED, TaskStatus.DEAD_LETTER):
            raise ValueError(f"record_failure moves to FAILED or DEAD_LETTER, not {status}")
        guard = Guard(
            statuses=sources_of(status) & frozenset({TaskStatus.RUNNING, TaskStatus.FAILED}),
            equals={"execution_node_id": node_id, "retry_count": attempt},
        )
        return await self._guarded_update(
            task_id,
            guard,
            {
                "status": status,
                "error_info": error.model_dump(mode="json"),
                "completed_at": utcnow(),
                "lease_until": None,
            },
        )

    async def record_retry(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        error: ErrorInfo,
        next_attempt_at: datetime,
        outbox_hold_until: datetime,
    ) -> BackgroundTask | None:
        """RUNNING -> RETRYING for the owner of ``attempt``: the next attempt is ``attempt + 1``
        at ``next_attempt_at``.

        The outbox goes back to pending, held until ``outbox_hold_until`` so the caller can
        publish the delayed message itself; if it cannot, the relay publishes it after that.
        """
        guard = _owner(node_id, attempt)
        return await self._guarded_update(
            task_id,
            guard,
            {
                "status": TaskStatus.RETRYING,
                "retry_count": attempt + 1,
                "next_attempt_at": next_attempt_at,
                "error_info": error.model_dump(mode="json"),
                "lease_until": None,
                "outbox.status": OutboxStatus.PENDING.value,
                "outbox.lease_until": outbox_hold_until,
                "outbox.lease_owner": node_id,
            },
        )

    @abstractmethod
    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]:
        """RUNNING tasks whose lease ended before ``before``, oldest lease first."""

    async def reap(
        self,
        task_id: str,
        *,
        attempt: int,
        before: datetime,
        error: ErrorInfo,
        next_attempt_at: datetime | None,
    ) -> BackgroundTask | None:
        """Settle an attempt whose worker vanished (RUNNING, lease ended before ``before``).

        With ``next_attempt_at`` the attempt counts as failed and the next one is scheduled
        (RETRYING, outbox pending for the relay); without it the task is dead-lettered.
        Guarded on the attempt and the lapsed lease, so a takeover or a late renewal wins.
        """
        guard = Guard(statuses=frozenset(), equals={"retry_count": attempt}, takeover_before=before)
        changes: dict[str, Any] = {
            "error_info": error.model_dump(mode="json"),
            "lease_until": None,
            "execution_node_id": None,  # the lost worker's late settlement must not look like ours
        }
        if next_attempt_at is None:
            changes.update(status=TaskStatus.DEAD_LETTER, completed_at=utcnow())
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
        return await self._guarded_update(task_id, guard, changes)

    async def request_cancel(self, task_id: str) -> BackgroundTask | None:
        """Cancel a task: QUEUED/RETRYING -> CANCELLED at once (its message is skipped when it
        arrives); RUNNING -> ``cancel_requested`` (the worker stops it cooperatively). Returns
        the document after the request, unchanged if the task had already finished, or None
        if there is no such task."""
        now = utcnow()
        waiting = Guard(statuses=frozenset({TaskStatus.QUEUED, TaskStatus.RETRYING}))
        done = await self._guarded_update(
            task_id,
            waiting,
            {
                "status": TaskStatus.CANCELLED,
                "cancel_requested": True,
                "completed_at": now,
                "lease_until": None,
            },
        )
        if done is not None:
            return done
        running = Guard(statuses=frozenset({TaskStatus.RUNNING}), equals={"cancel_requested": False})
        flagged = await self._guarded_update(task_id, running, {"cancel_requested": True})
        if flagged is not None:
            return flagged
        # It may have left RUNNING for RETRYING or QUEUED between the two updates: once more.
        done = await self._guarded_update(
            task_id,
            waiting,
            {
                "status": TaskStatus.CANCELLED,
                "cancel_requested": True,
                "completed_at": now,
                "lease_until": None,
            },
        )
        return done if done is not None else await self.get(task_id)

    async def release_claim(self, task_id: str, *, node_id: str, attempt: int) -> BackgroundTask | None:
        """RUNNING -> QUEUED at the same attempt: this node gives the task back unfinished
        (shutdown), so the next delivery claims it at once rather than after the lease."""
        guard = _owner(node_id, attempt)
        return await self._guarded_update(
            task_id, guard, {"status": TaskStatus.QUEUED, "execution_node_id": None, "lease_until": None}
        )

    async def record_cancelled(self, task_id: str, *, node_id: str, attempt: int) -> BackgroundTask | None:
        """RUNNING -> CANCELLED, for the owner of ``attempt`` whose executable stopped on request."""
        guard = _owner(node_id, attempt)
        return await self._guarded_update(
            task_id, guard, {"status": TaskStatus.CANCELLED, "completed_at": utcnow(), "lease_until": None}
        )

    async def mark_dead_letter(
        self, task_id: str, *, error: ErrorInfo, attempt: int | None = None
    ) -> BackgroundTask | None:
        """Move a task that can never run (malformed or poison message) to DEAD_LETTER.

        With ``attempt`` (a worker holding that attempt's message): only while the task waits
        to run at that attempt, or runs under a lapsed lease, never under a live owner.
        Without it (whoever finds a dead message later): from any non-final status.
        Finished tasks are left as they are.
        """
        if attempt is None:
            guard = Guard(statuses=sources_of(TaskStatus.DEAD_LETTER))
        else:
            guard = Guard(statuses=RUNNABLE, equals={"retry_count": attempt}, takeover_before=utcnow())
        return await self._guarded_update(
            task_id,
            guard,
            {
                "status": TaskStatus.DEAD_LETTER,
                "error_info": error.model_dump(mode="json"),
                "completed_at": utcnow(),
                "lease_until": None,
            },
        )


def _owner(node_id: str, attempt: int) -> Guard:
    """The task runs, claimed by ``node_id`` for ``attempt``."""
    return Guard(
        statuses=frozenset({TaskStatus.RUNNING}),
        equals={"execution_node_id": node_id, "retry_count": attempt},
    )


def check_page_size(limit: int) -> int:
    """Validate a page size (1..MAX_PAGE_SIZE)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


def outbox_published_changes(now: datetime) -> dict[str, Any]:
    """The changes that mark an outbox entry published."""
    return {
        "outbox.status": OutboxStatus.PUBLISHED.value,
        "outbox.published_at": now,
        "outbox.lease_until": None,
        "outbox.lease_owner": None,
    }
