"""An attempt's life in the store: claimed, its lease renewed, its outcome recorded by its owner.

Each operation is one guarded update (``StorePrimitives._guarded_update``) whose guard names
the attempt's owner, so a lost owner's late write changes nothing; shared by every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from taskplatform.errors import StoreError
from taskplatform.models import (
    RUNNABLE,
    BackgroundTask,
    ErrorInfo,
    OutboxStatus,
    TaskStatus,
    sources_of,
    utcnow,
)
from taskplatform.models.attempt import AttemptRecord
from taskplatform.store.primitives import StorePrimitives, owner_guard, with_event
from taskplatform.store.types import ClaimRequest, CompletionRequest, Guard

_RUNNING = frozenset({TaskStatus.RUNNING})


log = logging.getLogger(__name__)


class AttemptOperations(StorePrimitives):
    """Claims, leases and the outcomes an attempt's owner records (``TaskClaims``, ``AttemptOutcomes``)."""

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
        records: list[AttemptRecord] = []
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
                if item.attempt_record is not None:
                    records.append(item.attempt_record)
        if records:
            try:
                await self.add_attempts(records)
            except StoreError as exc:  # history: the completions stand
                log.error("the records of %d completed attempt(s) were not stored: %s", len(records), exc)
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
