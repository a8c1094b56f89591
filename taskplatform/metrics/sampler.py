"""Sampling what waits in the store into gauges: the outbox backlog, the oldest QUEUED task,
pending dead letters. Every process samples (a few indexed queries every few seconds);
dashboards take the ``max`` over instances."""

from __future__ import annotations

import asyncio

from taskplatform.metrics.registry import Metrics
from taskplatform.models import DeadLetterStatus, utcnow
from taskplatform.periodic import run_periodically
from taskplatform.store.base import BaseTaskStore
from taskplatform.store.deadletters import DeadLetterFilter

_PENDING = DeadLetterFilter(status=DeadLetterStatus.PENDING)


class BacklogSampler:
    """Sets ``outbox_pending``, ``oldest_queued_task_age_seconds`` and ``dead_letters_pending``."""

    def __init__(self, store: BaseTaskStore, metrics: Metrics, *, interval: float) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = interval

    async def sample_once(self) -> int:
        backlog = await self._store.backlog()
        self._metrics.outbox_pending.set(backlog.outbox_pending)
        oldest = backlog.oldest_queued_at
        self._metrics.oldest_queued_age.set(max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0)
        pending = await self._store.count_dead_letters(_PENDING)
        self._metrics.dead_letters_pending.set(pending.total)
        return 0

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(self.sample_once, stop, interval=self._interval, name="metrics sampler")
