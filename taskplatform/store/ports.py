"""The store's ports: what the platform needs from durable task state, split by concern.

A service is typed against the narrowest port it uses (a service needing several declares
their combination beside itself, as ``class ReaperStore(LostWorkers, Retention, Protocol)``);
``TaskStore`` is all of them. Only here are the store's signatures declared: ``BaseTaskStore``
implements them (``tests/store/test_ports.py`` compares every backend's), and the contract
suite in ``tests/store`` pins the behaviour. Status changes take an optional ``event_id``,
written as ``last_event_id`` by the same update; leases are times of the store's clock.
"""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus
from taskplatform.store.record_ports import (
    AttemptHistory,
    AuditLog,
    DeadLetters,
    RateLimits,
    Retention,
    WorkerRegistry,
)
from taskplatform.store.types import (
    MAX_PAGE_SIZE,
    Backlog,
    ClaimRequest,
    CompletionRequest,
    ParentState,
    TaskFilter,
    TaskPage,
)

__all__ = [
    "AttemptOutcomes",
    "AttemptHistory",
    "AuditLog",
    "Cancellation",
    "DeadLetters",
    "LostWorkers",
    "Outbox",
    "ParentRollups",
    "RateLimits",
    "Retention",
    "StoreClock",
    "StoreLifecycle",
    "TaskClaims",
    "TaskCreation",
    "TaskReads",
    "TaskRevisions",
    "TaskStore",
    "WorkerRegistry",
]


@runtime_checkable
class StoreLifecycle(Protocol):
    """Connecting, and whether the store answers."""

    url_scheme: str

    @abstractmethod
    async def open(self) -> None:
        """Connect, make sure the schema/indexes exist, and measure the store's clock."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    @abstractmethod
    async def answers(self) -> bool:
        """Whether a ping succeeds within a few seconds: False on any fault, never raises."""


@runtime_checkable
class StoreClock(Protocol):
    """The store's clock, which every lease, lapse and takeover time is written and compared in."""

    #: The store's clock minus this process's, as last measured (``sync_clock``).
    clock_offset: timedelta

    @abstractmethod
    def now(self) -> datetime:
        """The store's clock: this process's, corrected by ``clock_offset``."""

    @abstractmethod
    async def sync_clock(self) -> timedelta:
        """Measure ``clock_offset`` again (also done by ``open``); returns it. StoreError if unreachable."""


@runtime_checkable
class TaskReads(Protocol):
    """Reading tasks."""

    @abstractmethod
    async def get(self, task_id: str) -> BackgroundTask | None:
        """The document, or None."""

    @abstractmethod
    async def get_visible(self, task_id: str, *, user_id: str) -> BackgroundTask | None:
        """The document if ``user_id`` owns it (filtered in the query), else None."""

    @abstractmethod
    async def find_by_idempotency_key(self, user_id: str | None, key: str) -> BackgroundTask | None:
        """The task ``user_id`` created with idempotency ``key``, or None."""

    @abstractmethod
    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """A page of documents, newest first; InvalidCursorError for a cursor not of this store."""

    @abstractmethod
    def child_pages(
        self, parent_id: str, *, page_size: int = MAX_PAGE_SIZE
    ) -> AsyncIterator[builtins.list[BackgroundTask]]:
        """The children of ``parent_id``, a page at a time (newest first)."""

    @abstractmethod
    async def count_by_status(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (statuses with none are omitted)."""

    @abstractmethod
    async def backlog(self) -> Backlog:
        """Pending outbox entries and the oldest QUEUED / pending ``created_at`` (cheap)."""


@runtime_checkable
class TaskCreation(Protocol):
    """Inserting new tasks."""

    @abstractmethod
    async def create(self, task: BackgroundTask) -> None:
        """Insert one new document; DuplicateTaskError if its id exists."""

    @abstractmethod
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        """Insert new documents; DuplicateTaskError if an id exists (nothing inserted)."""


@runtime_checkable
class TaskClaims(StoreClock, Protocol):
    """An attempt's ownership: claiming a task, renewing its lease, giving it back."""

    @abstractmethod
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
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def try_set_running_many(
        self, claims: Sequence[ClaimRequest], *, node_id: str, lease_until: datetime
    ) -> dict[str, BackgroundTask]: ...
    @abstractmethod
    async def renew_lease(
        self, task_id: str, *, node_id: str, attempt: int, lease_until: datetime
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def release_claim(
        self, task_id: str, *, node_id: str, attempt: int, event_id: str | None = None
    ) -> BackgroundTask | None: ...


@runtime_checkable
class AttemptOutcomes(StoreClock, Protocol):
    """What an attempt's owner records: progress, completion, failure, retry, cancellation."""

    @abstractmethod
    async def record_progress(
        self,
        task_id: str,
        *,
        node_id: str,
        progress: Mapping[str, Any],
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def record_completions(
        self, items: Sequence[CompletionRequest], *, node_id: str
    ) -> dict[str, int]: ...
    @abstractmethod
    async def record_completion(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        result: Mapping[str, Any] | None,
        event_id: str | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def record_failure(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        error: ErrorInfo,
        status: TaskStatus,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    @abstractmethod
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
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def record_cancelled(
        self, task_id: str, *, node_id: str, attempt: int, event_id: str | None = None
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def mark_dead_letter(
        self,
        task_id: str,
        *,
        error: ErrorInfo | None,
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    @staticmethod
    @abstractmethod
    def completion_changes(now: datetime) -> dict[str, Any]:
        """The changes a recorded completion makes (besides the result)."""


@runtime_checkable
class LostWorkers(StoreClock, Protocol):
    """Finding and settling attempts whose worker vanished (the reaper)."""

    @abstractmethod
    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]:
        """RUNNING tasks whose lease ended before ``before``, oldest lease first."""

    @abstractmethod
    async def list_aimed_waiting(
        self, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> builtins.list[BackgroundTask]:
        """Tasks aimed at a node or at any worker carrying labels (a ``target`` with a queue of
        its own: ``mode: any``) that wait to run (QUEUED or RETRYING), oldest first (by
        ``created_at``, then id), after ``after`` (the last one's ``created_at`` and id) when
        given: what the sweep fails once no worker they may run on has been online for too long."""

    @abstractmethod
    async def reap(
        self,
        task_id: str,
        *,
        attempt: int,
        before: datetime,
        error: ErrorInfo,
        next_attempt_at: datetime | None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...


@runtime_checkable
class Cancellation(Protocol):
    """Cancelling a task: at once while it waits, cooperatively while it runs."""

    @abstractmethod
    async def request_cancel(self, task_id: str, *, event_id: str | None = None) -> BackgroundTask | None: ...
    @abstractmethod
    async def cancel_waiting(self, task_id: str, *, event_id: str | None = None) -> BackgroundTask | None: ...
    @abstractmethod
    async def flag_cancel(self, task_id: str) -> BackgroundTask | None: ...


@runtime_checkable
class ParentRollups(Protocol):
    """Parents waiting for their children, and the children's roll-up into their summary.

    A child is counted in one parent: once a parent counts it, a roll-up of it into another
    parent raises ``ValueError`` ("task C is a child of P, not of Q") and changes neither parent
    (in ``apply_rollups``, roll-ups before it in the batch may stand), on every backend. SQL and
    memory keep one ledger entry per child; MongoDB keeps each parent's ledger in the parent and
    looks in the parent the child's document names, the only parent the platform rolls a child
    into. The platform never tries it; the refusal keeps the counts true.
    """

    @abstractmethod
    async def set_awaiting_children(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        result: Mapping[str, Any] | None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def finish_parent(
        self, task_id: str, *, expected_version: int, status: TaskStatus, event_id: str | None = None
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def apply_rollup(
        self, parent_id: str, child_id: str, status: TaskStatus, child_version: int
    ) -> ParentState | None:
        """Count ``child_id`` in its parent's summary, atomically; a duplicate or older
        ``child_version`` changes nothing (``store.rollup``). The parent after, or None."""

    @abstractmethod
    async def apply_rollups(
        self, parent_id: str, items: Sequence[tuple[str, TaskStatus, int]]
    ) -> ParentState | None: ...
    @abstractmethod
    async def rollup_children(self, parent_id: str) -> ParentState | None: ...
    @abstractmethod
    async def list_awaiting_parents(
        self, *, updated_before: datetime, limit: int
    ) -> builtins.list[BackgroundTask]:
        """Parents waiting for their children, not updated since ``updated_before``, oldest first."""


@runtime_checkable
class Outbox(StoreClock, Protocol):
    """The messages still to publish: leased by a publisher, marked published, failures counted."""

    @abstractmethod
    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]:
        """Lease to ``owner`` up to ``limit`` pending entries whose lease is free or lapsed."""

    @abstractmethod
    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int:
        """Mark these entries published, only where ``owner`` holds the lease (None: entries nobody
        leased), so a late mark never hides a newer message; returns how many changed."""

    @abstractmethod
    async def record_publish_failure(self, task_id: str, error: str, *, retry_in: float = 0.0) -> None:
        """Count a failed publish; the entry stays pending, its owner kept, and its lease lapses
        ``retry_in`` seconds from now (0: at once), which is when a relay may take it again."""


@runtime_checkable
class TaskRevisions(Protocol):
    """An operator's revisions of a task: amending a queued one, replaying a dead one."""

    @abstractmethod
    async def amend_queued(
        self,
        task_id: str,
        *,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        publish_hold_until: datetime | None = None,
        owner: str | None = None,
    ) -> BackgroundTask | None: ...
    @abstractmethod
    async def replay_task(
        self,
        task_id: str,
        *,
        expected_replays: int,
        parameters: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...


@runtime_checkable
class TaskStore(
    StoreLifecycle,
    TaskReads,
    TaskCreation,
    TaskClaims,
    AttemptOutcomes,
    LostWorkers,
    Cancellation,
    ParentRollups,
    Outbox,
    TaskRevisions,
    Retention,
    DeadLetters,
    AuditLog,
    RateLimits,
    WorkerRegistry,
    AttemptHistory,
    Protocol,
):
    """Everything the platform needs from durable task state. Contract: ``tests/store``."""
