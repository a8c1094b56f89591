"""The store's ports for records beside the tasks: retention, dead letters, the audit log,
rate-limit reservations, the worker registry and the attempt history. Part of ``ports`` (which
re-exports them; its docstring says how the ports are used and checked)."""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from taskplatform.models import AuditEntry, DeadLetter
from taskplatform.models.attempt import MAX_ATTEMPTS_KEPT, AttemptRecord
from taskplatform.models.worker import WorkerRecord, WorkerState

if TYPE_CHECKING:
    from taskplatform.store.deadletters import (
        AuditFilter,
        AuditPage,
        DeadLetterCounts,
        DeadLetterFilter,
        DeadLetterPage,
        UpsertOutcome,
    )
    from taskplatform.store.deletion import DeleteOutcome
    from taskplatform.store.ratelimits import Reservation
    from taskplatform.store.workers import WorkerFilter, WorkerPage


@runtime_checkable
class Retention(Protocol):
    """Deleting finished tasks: one on request (with its sub-tasks), or all past their retention."""

    @abstractmethod
    async def delete_task(self, task_id: str) -> DeleteOutcome: ...
    @abstractmethod
    async def purge_finished(self, *, before: datetime, limit: int = 1000) -> int: ...


@runtime_checkable
class DeadLetters(Protocol):
    """Dead-letter records: one per dead task, counted, replayed or discarded by an operator."""

    @abstractmethod
    async def upsert_dead_letter(self, record: DeadLetter) -> tuple[DeadLetter, UpsertOutcome]: ...
    @abstractmethod
    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        """The record, or None."""

    @abstractmethod
    async def list_dead_letters(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> DeadLetterPage:
        """A page of records, most recently seen first, ties by id."""

    @abstractmethod
    async def count_dead_letters(self, filters: DeadLetterFilter | None = None) -> DeadLetterCounts:
        """How many records match ``filters``, in all, by task type and by reason."""

    @abstractmethod
    async def mark_dead_letter_replayed(
        self, dead_letter_id: str, *, generation: int, at: datetime
    ) -> DeadLetter | None: ...
    @abstractmethod
    async def mark_dead_letter_discarded(self, dead_letter_id: str, *, at: datetime) -> DeadLetter | None: ...


@runtime_checkable
class AuditLog(Protocol):
    """The operators' audit log."""

    @abstractmethod
    async def add_audit(self, entry: AuditEntry) -> None:
        """Append ``entry``; StoreError if its id exists."""

    @abstractmethod
    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Append ``entries`` in one write (SQL: one transaction, all or none; MongoDB: one
        ordered insert, which may have stored those before a failing one); StoreError if one
        cannot be stored (an id that exists)."""

    @abstractmethod
    async def list_audit(
        self,
        filters: AuditFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        dead_letter_id: str | None = None,
    ) -> AuditPage:
        """A page of the log, newest first, of the entries matching ``filters`` (and naming
        ``dead_letter_id``, when given)."""

    @abstractmethod
    async def purge_audit(self, *, before: datetime, limit: int = 1000) -> int:
        """Retention: delete up to ``limit`` entries made before ``before``, oldest first; how many."""


@runtime_checkable
class RateLimits(Protocol):
    """Rate-limit reservations shared by every process using the store (``store.ratelimits``)."""

    @abstractmethod
    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """Reserve ``key``'s next slot if it opens within ``max_wait`` seconds: one atomic operation."""

    @abstractmethod
    async def prune_rate_limits(self, *, now: float | None = None) -> int:
        """Delete the keys whose slots have all passed before ``now`` (epoch seconds); how many."""


@runtime_checkable
class WorkerRegistry(Protocol):
    """The fleet registry: each worker's record, its beats, and the sweep that finds the silent
    (``store.workers`` says what each operation guarantees)."""

    @abstractmethod
    async def beat_worker(self, record: WorkerRecord) -> WorkerState | None:
        """Write ``record`` whole, by node id; the state the stored record had before (None: new)."""

    @abstractmethod
    async def get_worker(self, node_id: str) -> WorkerRecord | None:
        """The record, or None."""

    @abstractmethod
    async def list_workers(
        self, filters: WorkerFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> WorkerPage:
        """A page of records by node id, ascending."""

    @abstractmethod
    async def sweep_offline_workers(self, *, now: datetime, limit: int = 100) -> list[WorkerRecord]:
        """Move present records expired at ``now`` to ``offline``; the records moved (by this call)."""

    @abstractmethod
    async def prune_workers(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete ``stopped``/``offline`` records last seen before ``before``; how many."""


@runtime_checkable
class AttemptHistory(Protocol):
    """Every attempt of every task, as it ended."""

    @abstractmethod
    async def add_attempts(self, records: Sequence[AttemptRecord]) -> None:
        """Store ``records``; one whose id is stored already is left as it is."""

    @abstractmethod
    async def list_attempts(
        self, task_id: str, *, limit: int = MAX_ATTEMPTS_KEPT
    ) -> builtins.list[AttemptRecord]:
        """``task_id``'s attempts, oldest first (by end, then id): its newest ``limit``."""
