"""What each backend implements: the primitives every shared store operation is built on.

A backend implements the port's reads, inserts, roll-up, outbox and rate-limit operations
(``ports``) and the two primitives below; the shared operations (``BaseTaskStore``) do the rest.
"""

from __future__ import annotations

import builtins
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus, utcnow
from taskplatform.store.ports import TaskStore
from taskplatform.store.types import MAX_PAGE_SIZE, Guard, TaskFilter


class StorePrimitives(TaskStore, ABC):
    """What a backend implements besides the port's reads and writes of its own (``TaskStore``):
    the store's clock readings and the guarded update every shared operation is built on."""

    url_scheme: str = ""

    @abstractmethod
    async def _clock_samples(self) -> builtins.list[ClockSample]:
        """Readings of the store server's clock (``read_clock``); none when every process using
        the store shares this machine's clock (SQLite: a local file). StoreError when unreachable."""

    @abstractmethod
    async def _guarded_update(
        self, task_id: str, guard: Guard, changes: Mapping[str, Any]
    ) -> BackgroundTask | None:
        """Apply ``changes`` atomically if ``guard`` holds; bump version, set updated_at.

        ``changes`` keys are document field names (``outbox.<field>`` for outbox state);
        values are JSON-ready (models already dumped) except datetimes and enums.
        Returns the updated document, or None when the guard did not hold.
        """

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


def failed_lease_until(now: datetime, retry_in: float) -> datetime:
    """The lease of an outbox entry whose publish failed: lapsed at once, or ``retry_in`` from now."""
    return now + timedelta(seconds=retry_in) if retry_in > 0 else now - LAPSED


def owner_guard(node_id: str, attempt: int) -> Guard:
    """The task runs, claimed by ``node_id`` for ``attempt``, and is not a parent waiting for
    its children (whose own execution is over: it has no owner any more)."""
    return Guard(
        statuses=frozenset({TaskStatus.RUNNING}),
        equals={"execution_node_id": node_id, "retry_count": attempt, "awaiting_children": False},
    )


def stored_value(value: Any) -> Any:
    """A change's value as a backend stores it: a status enum as its text, anything else as is."""
    return value.value if isinstance(value, TaskStatus | OutboxStatus) else value


def with_event(changes: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    """``changes`` plus ``last_event_id`` when an event id is given."""
    if event_id is not None:
        changes["last_event_id"] = event_id
    return changes
