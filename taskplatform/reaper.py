"""The reaper: settles attempts whose worker vanished without a message left to redeliver."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from executors.registry import ExecutableRegistry
from taskplatform.models import ErrorInfo, utcnow
from taskplatform.periodic import run_periodically
from taskplatform.retry import RetryPolicy
from taskplatform.store.base import BaseTaskStore

log = logging.getLogger(__name__)


class Reaper:
    """Finds RUNNING tasks whose lease ended more than ``grace`` seconds ago.

    A live worker renews its lease every third of its length, so a lease that lapsed with
    room to spare means the worker is gone. Usually its message comes back and a consumer
    takes over; the reaper is for when none does. It counts the lost attempt as failed
    (``WorkerLost``) under the task type's retry policy: another attempt is scheduled
    (RETRYING, published by the outbox relay), or, when a task keeps losing its workers, it
    is dead-lettered instead of being revived forever.
    """

    def __init__(
        self,
        store: BaseTaskStore,
        registry: ExecutableRegistry,
        *,
        default_policy: RetryPolicy,
        node_id: str,
        interval: float = 10.0,
        grace: float = 5.0,
        batch_size: int = 100,
    ) -> None:
        self._store = store
        self._registry = registry
        self._default_policy = default_policy
        self._node_id = node_id
        self._interval = interval
        self._grace = grace
        self._batch = batch_size
        self.reaped = 0

    def _policy(self, task_type: str) -> RetryPolicy:
        if task_type in self._registry:
            return self._registry.get(task_type).retry_policy or self._default_policy
        return self._default_policy

    async def run_once(self) -> int:
        """One pass; returns how many attempts it settled."""
        before = utcnow() - timedelta(seconds=self._grace)
        settled = 0
        for task in await self._store.list_lapsed(before=before, limit=self._batch):
            attempt = task.retry_count
            policy = self._policy(task.task_type)
            error = ErrorInfo(
                type="WorkerLost",
                message=f"worker {task.execution_node_id} stopped renewing its lease ({task.lease_until})",
                attempt=attempt,
                node_id=self._node_id,
                reason="lease-expired" if policy.attempts_left(attempt) else "attempts-exhausted",
            )
            next_at = (
                utcnow() + timedelta(seconds=policy.delay_after(attempt))
                if policy.attempts_left(attempt)
                else None
            )
            done = await self._store.reap(
                task.id, attempt=attempt, before=before, error=error, next_attempt_at=next_at
            )
            if done is not None:
                settled += 1
                log.warning(
                    "reaped task %s (attempt %d, node %s): now %s",
                    task.id,
                    attempt,
                    task.execution_node_id,
                    done.status,
                )
        self.reaped += settled
        return settled

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set."""
        await run_periodically(self.run_once, stop, interval=self._interval, name="reaper")
