"""What each backend implements: the primitives every shared store operation is built on."""

from __future__ import annotations

import builtins
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.store.ratelimits import Reservation
from taskplatform.store.types import MAX_PAGE_SIZE, Backlog, Guard, ParentState, TaskFilter, TaskPage


class StorePrimitives(ABC):
    """A backend's primitives. Shared operations: ``BaseTaskStore``."""

    url_scheme: str = ""

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
    async def _clock_samples(self) -> builtins.list[ClockSample]:
        """Readings of the store server's clock (``read_clock``); none when every process using
        the store shares this machine's clock (SQLite: a local file). StoreError when unreachable."""

    @abstractmethod
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        """Insert new documents; DuplicateTaskError if an id exists (nothing inserted)."""

    @abstractmethod
    async def get(self, task_id: str) -> BackgroundTask | None:
        """The document, or None."""

    @abstractmethod
    async def get_visible(self, task_id: str, *, user_id: str) -> BackgroundTask | None:
        """The document if ``user_id`` owns it, else None. The owner is part of the query, so
        another user's task is neither loaded nor parsed: it answers as fast as a missing one."""

    @abstractmethod
    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """A page of documents, newest first."""

    async def child_pages(
        self, parent_id: str, *, page_size: int = MAX_PAGE_SIZE
    ) -> AsyncIterator[builtins.list[BackgroundTask]]:
        """The children of ``parent_id``, a page at a time (newest first)."""
        filters = TaskFilter(parent_task_id=parent_id)
        cursor: str | None = None
        while True:
            page = await self.list(filters, limit=page_size, cursor=cursor)
            if page.items:
                yield page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @abstractmethod
    async def backlog(self) -> Backlog:
        """How many outbox entries are pending, and the oldest QUEUED task's ``created_at``
        (both from indexes: cheap enough to sample every few seconds)."""

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
    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]:
        """RUNNING tasks whose lease ended before ``before``, oldest lease first."""

    @abstractmethod
    async def find_by_idempotency_key(self, user_id: str | None, key: str) -> BackgroundTask | None:
        """The task ``user_id`` created with idempotency ``key``, or None."""

    @abstractmethod
    async def apply_rollup(
        self, parent_id: str, child_id: str, status: TaskStatus, child_version: int
    ) -> ParentState | None:
        """Count ``child_id`` in the bucket of ``status`` in its parent's summary, atomically.

        The parent keeps a ledger entry (bucket, version) per child: a child seen for the
        first time adds to ``total`` and its bucket; a newer ``child_version`` moves it to
        the new bucket; a version the ledger already holds, or an older one, changes nothing
        (see ``taskplatform.store.rollup``). The parent's version is bumped whenever a count
        changes. Returns the parent after (also when nothing changed), None if there is no
        such parent. Exact under concurrent roll-ups into one parent.
        """

    @abstractmethod
    async def list_awaiting_parents(
        self, *, updated_before: datetime, limit: int
    ) -> builtins.list[BackgroundTask]:
        """RUNNING parents waiting for their children, not updated since ``updated_before``,
        least recently updated first (for the reconcile sweep)."""

    @abstractmethod
    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]:
        """Lease up to ``limit`` pending outbox entries created before ``created_before``
        whose lease is free or lapsed; returns them (leased to ``owner``)."""

    @abstractmethod
    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int:
        """Mark the outbox of these tasks published, only where its lease is held by ``owner``
        (None: entries nobody leased): a mark of an earlier publish, landing after someone took
        the entry over for a newer message (a relay, a priority change, a retry), leaves it
        pending. Returns how many changed."""

    @abstractmethod
    async def record_publish_failure(self, task_id: str, error: str) -> None:
        """Count a failed publish attempt and keep the error; the entry stays pending and its
        lease lapses now (free for the next relay pass), its owner kept."""

    @abstractmethod
    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """Reserve ``key``'s next rate-limit slot if it opens within ``max_wait`` seconds (see
        ``taskplatform.store.ratelimits``): one atomic operation, shared by every process."""

    @abstractmethod
    async def prune_rate_limits(self, *, now: float | None = None) -> int:
        """Delete the rate-limit keys whose slots have all passed before ``now`` (epoch
        seconds); returns how many."""


#: Readings per measurement of the store's clock; the one with the shortest round trip is kept.
CLOCK_SAMPLES = 5


@dataclass(frozen=True)
class ClockSample:
    """One reading of the store server's clock: this process's clock when the query left, the
    round trip (seconds, monotonic) and the server's time in its answer."""

    sent: datetime
    round_trip: float
    server: datetime

    @property
    def offset(self) -> timedelta:
        """The server's clock minus this process's, taking the answer to be from the round trip's
        midpoint (so within half the round trip)."""
        return self.server - (self.sent + timedelta(seconds=self.round_trip / 2))


async def read_clock(
    read: Callable[[], Awaitable[datetime]], samples: int = CLOCK_SAMPLES
) -> list[ClockSample]:
    """``samples`` readings of a server clock: ``read`` asks the server for its current time."""
    readings: list[ClockSample] = []
    for _ in range(samples):
        sent, started = utcnow(), time.perf_counter()
        server = await read()
        round_trip = time.perf_counter() - started
        if server.tzinfo is None:  # BSON datetimes have no zone: UTC
            server = server.replace(tzinfo=UTC)
        readings.append(ClockSample(sent=sent, round_trip=round_trip, server=server))
    return readings


def best_offset(samples: Sequence[ClockSample]) -> timedelta:
    """The offset of the reading with the shortest round trip (the least uncertain)."""
    return min(samples, key=lambda s: s.round_trip).offset


#: How far in the past a lease is set to lapse it (MongoDB keeps milliseconds: "now" may not
#: be earlier than the next reader's "now").
LAPSED = timedelta(seconds=1)


def owner_guard(node_id: str, attempt: int) -> Guard:
    """The task runs, claimed by ``node_id`` for ``attempt``, and is not a parent waiting for
    its children (whose own execution is over: it has no owner any more)."""
    return Guard(
        statuses=frozenset({TaskStatus.RUNNING}),
        equals={"execution_node_id": node_id, "retry_count": attempt, "awaiting_children": False},
    )


def with_event(changes: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    """``changes`` plus ``last_event_id`` when an event id is given."""
    if event_id is not None:
        changes["last_event_id"] = event_id
    return changes
