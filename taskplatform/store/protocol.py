"""The ``TaskStore`` port: what the platform needs from durable task state."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from taskplatform.models import AuditEntry, BackgroundTask, DeadLetter, ErrorInfo, TaskStatus
from taskplatform.store.deadletters import (
    AuditPage,
    DeadLetterCounts,
    DeadLetterFilter,
    DeadLetterPage,
    UpsertOutcome,
)
from taskplatform.store.deletion import DeleteOutcome
from taskplatform.store.ratelimits import Reservation
from taskplatform.store.types import (
    Backlog,
    ClaimRequest,
    CompletionRequest,
    ParentState,
    TaskFilter,
    TaskPage,
)


@runtime_checkable
class TaskStore(Protocol):
    """What the platform needs from durable task state. Contract: ``tests/store``.

    Every status-changing operation takes an optional ``event_id``, written as the
    document's ``last_event_id`` by the same conditional update.
    """

    url_scheme: str
    #: The store's clock minus this process's, as last measured (``sync_clock``).
    clock_offset: timedelta

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    # ------------------------------------------------------------ the store's clock
    def now(self) -> datetime:
        """The store's clock: every lease, lapse and takeover time is written and compared in it."""
        ...

    async def sync_clock(self) -> timedelta:
        """Measure ``clock_offset`` again (also done by ``open``); returns it."""
        ...

    async def create(self, task: BackgroundTask) -> None: ...
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None: ...
    async def get(self, task_id: str) -> BackgroundTask | None: ...
    # The task if ``user_id`` owns it, else None; the owner is filtered in the query.
    async def get_visible(self, task_id: str, *, user_id: str) -> BackgroundTask | None: ...
    async def find_by_idempotency_key(self, user_id: str | None, key: str) -> BackgroundTask | None: ...
    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage: ...
    async def count_by_status(self) -> dict[TaskStatus, int]: ...
    async def backlog(self) -> Backlog: ...

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
    ) -> BackgroundTask | None: ...
    async def try_set_running_many(
        self, claims: Sequence[ClaimRequest], *, node_id: str, lease_until: datetime
    ) -> dict[str, BackgroundTask]: ...
    async def renew_lease(
        self, task_id: str, *, node_id: str, attempt: int, lease_until: datetime
    ) -> BackgroundTask | None: ...
    async def record_progress(
        self,
        task_id: str,
        *,
        node_id: str,
        progress: Mapping[str, Any],
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    async def record_completions(
        self, items: Sequence[CompletionRequest], *, node_id: str
    ) -> dict[str, int]: ...
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
    async def record_cancelled(
        self, task_id: str, *, node_id: str, attempt: int, event_id: str | None = None
    ) -> BackgroundTask | None: ...
    async def release_claim(
        self, task_id: str, *, node_id: str, attempt: int, event_id: str | None = None
    ) -> BackgroundTask | None: ...
    async def mark_dead_letter(
        self,
        task_id: str,
        *,
        error: ErrorInfo | None,
        attempt: int | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...

    # ------------------------------------------------------------ lost workers
    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]: ...
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

    # ------------------------------------------------------------ cancellation
    async def request_cancel(self, task_id: str, *, event_id: str | None = None) -> BackgroundTask | None: ...
    async def cancel_waiting(self, task_id: str, *, event_id: str | None = None) -> BackgroundTask | None: ...
    async def flag_cancel(self, task_id: str) -> BackgroundTask | None: ...

    # ------------------------------------------------------------ parents and children
    async def set_awaiting_children(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        result: Mapping[str, Any] | None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    async def finish_parent(
        self, task_id: str, *, expected_version: int, status: TaskStatus, event_id: str | None = None
    ) -> BackgroundTask | None: ...
    async def apply_rollup(
        self, parent_id: str, child_id: str, status: TaskStatus, child_version: int
    ) -> ParentState | None: ...
    async def apply_rollups(
        self, parent_id: str, items: Sequence[tuple[str, TaskStatus, int]]
    ) -> ParentState | None: ...
    async def rollup_children(self, parent_id: str) -> ParentState | None: ...
    async def list_awaiting_parents(
        self, *, updated_before: datetime, limit: int
    ) -> builtins.list[BackgroundTask]: ...

    # ------------------------------------------------------------ outbox
    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]: ...
    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int: ...
    async def record_publish_failure(self, task_id: str, error: str) -> None: ...

    # ------------------------------------------------------------ replays and dead letters
    async def replay_task(
        self,
        task_id: str,
        *,
        expected_replays: int,
        parameters: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None: ...
    async def upsert_dead_letter(self, record: DeadLetter) -> tuple[DeadLetter, UpsertOutcome]: ...
    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None: ...
    async def list_dead_letters(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> DeadLetterPage: ...
    async def count_dead_letters(self, filters: DeadLetterFilter | None = None) -> DeadLetterCounts: ...
    async def mark_dead_letter_replayed(
        self, dead_letter_id: str, *, generation: int, at: datetime
    ) -> DeadLetter | None: ...
    async def mark_dead_letter_discarded(self, dead_letter_id: str, *, at: datetime) -> DeadLetter | None: ...
    async def add_audit(self, entry: AuditEntry) -> None: ...

    # ------------------------------------------------------------ changing and deleting tasks
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
    async def delete_task(self, task_id: str) -> DeleteOutcome: ...
    async def purge_finished(self, *, before: datetime, limit: int = 1000) -> int: ...

    # ------------------------------------------------------------ rate limits
    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation: ...
    async def prune_rate_limits(self, *, now: float | None = None) -> int: ...
    async def list_audit(
        self, *, limit: int = 50, cursor: str | None = None, dead_letter_id: str | None = None
    ) -> AuditPage: ...
