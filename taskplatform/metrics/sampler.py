"""Sampling what waits in the store into gauges: the outbox backlog and its oldest entry, the
oldest QUEUED task, pending dead letters. Every process samples (a few indexed queries every
few seconds); dashboards take the ``max`` over instances. Beside it, a heartbeat of the event
loop every few seconds, on its own, so a slow store does not look like a hung loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Protocol

from taskplatform.metrics.registry import Metrics
from taskplatform.models import DeadLetterStatus, utcnow
from taskplatform.periodic import run_periodically
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.store.ports import DeadLetters, TaskReads

_PENDING = DeadLetterFilter(status=DeadLetterStatus.PENDING)
#: Seconds between two heartbeats (independent of the store: a slow store is no hung loop).
HEARTBEAT_SECONDS = 5.0


def _age(since: datetime | None, now: datetime) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


class SampledStore(TaskReads, DeadLetters, Protocol):
    """What the sampler reads: the task backlog and the count of pending dead letters."""


class BacklogSampler:
    """Sets the heartbeat, the outbox backlog and its oldest entry's age, the oldest queued task's
    age and the pending dead letters."""

    def __init__(self, store: SampledStore, metrics: Metrics, *, interval: float) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = interval

    async def sample_once(self) -> int:
        backlog = await self._store.backlog()
        now = utcnow()
        self._metrics.outbox_pending.set(backlog.outbox_pending)
        self._metrics.outbox_oldest_pending_age.set(_age(backlog.oldest_pending_at, now))
        self._metrics.oldest_queued_age.set(_age(backlog.oldest_queued_at, now))
        pending = await self._store.count_dead_letters(_PENDING)
        self._metrics.dead_letters_pending.set(pending.total)
        return 0

    async def beat(self) -> int:
        self._metrics.heartbeat.set(time.time())
        return 0

    async def run(self, stop: asyncio.Event) -> None:
        heartbeat = asyncio.create_task(
            run_periodically(self.beat, stop, interval=HEARTBEAT_SECONDS, name="heartbeat")
        )
        try:
            await run_periodically(self.sample_once, stop, interval=self._interval, name="metrics sampler")
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
