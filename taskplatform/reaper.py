"""The reaper: settles attempts whose worker vanished without a message left to redeliver."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from taskplatform.deadletters.capture import record_dead_task
from taskplatform.errors import StoreError
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskDeadLettered, TaskFailed, TaskRetrying
from taskplatform.models import BackgroundTask, ErrorInfo, utcnow
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.periodic import run_periodically
from taskplatform.retry import RetryPolicy
from taskplatform.store.ports import AuditLog, DeadLetters, LostWorkers, RateLimits, Retention
from taskplatform.targets import TargetExpiry
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.presence import FleetSweep

log = logging.getLogger(__name__)

#: Tasks deleted per retention statement, and statements per pass (bounds one pass's work).
PURGE_BATCH = 1000
PURGE_BATCHES_PER_PASS = 20


class ReaperStore(LostWorkers, Retention, RateLimits, DeadLetters, AuditLog, Protocol):
    """What the reaper uses of the store: lapsed leases, retention, rate-limit keys, and the
    dead letters of tasks it gives up on."""


class Reaper:
    """Finds RUNNING tasks whose lease ended more than ``grace`` seconds ago.

    A live worker renews its lease every third of its length, so a lease that lapsed with
    room to spare means the worker is gone. Usually its message comes back and a consumer
    takes over; the reaper is for when none does. It counts the lost attempt as failed
    (``WorkerLost``) under the task type's retry policy: another attempt is scheduled
    (RETRYING, published by the outbox relay), or, when a task keeps losing its workers, it
    is dead-lettered instead of being revived forever. Each pass also recounts parents
    that have waited for their children for a while, so a roll-up lost in a crash heals, and,
    once per ``retention_interval``, deletes tasks that ended more than ``retention_seconds``
    ago (retention; None keeps them) and the rate-limit keys whose slots have all passed. With
    ``fleet``, each pass also marks workers that stopped beating offline, and the retention pass
    deletes long-gone workers' records (``FleetSweep``); with ``targets``, each pass then fails
    the aimed tasks whose node stayed offline past their ``target_timeout`` (``TargetExpiry``).
    """

    def __init__(
        self,
        store: ReaperStore,
        registry: ExecutableRegistry,
        bus: EventBus,
        aggregator: StateAggregator,
        *,
        default_policy: RetryPolicy,
        node_id: str,
        interval: float = 10.0,
        grace: float = 5.0,
        batch_size: int = 100,
        fleet: FleetSweep | None = None,
        targets: TargetExpiry | None = None,
        parent_idle_seconds: float = 60.0,
        retention_seconds: float | None = None,
        audit_retention_seconds: float | None = None,
        retention_interval: float = 300.0,
        quiet_after_outage: float = 60.0,
    ) -> None:
        self._quiet_after_outage = quiet_after_outage
        self._quiet_until = float("-inf")
        self._store = store
        self._bus = bus
        self._aggregator = aggregator
        self._parent_idle = parent_idle_seconds
        self._last_reconcile = float("-inf")
        self._retention = retention_seconds
        self._audit_retention = audit_retention_seconds
        self._retention_interval = retention_interval
        self._last_purge = float("-inf")
        self.purged = 0
        self.audit_purged = 0
        self._registry = registry
        self._default_policy = default_policy
        self._node_id = node_id
        self._interval = interval
        self._grace = grace
        self._batch = batch_size
        self._fleet = fleet
        self._targets = targets
        self.reaped = 0

    def _at_most_once(self, task_type: str) -> bool:
        return task_type in self._registry and self._registry.get(task_type).at_most_once

    def _policy(self, task_type: str) -> RetryPolicy:
        if task_type in self._registry:
            return self._registry.get(task_type).retry_policy or self._default_policy
        return self._default_policy

    async def run_once(self) -> int:
        """One pass; returns how many attempts it settled.

        A pass that met the store unreachable (StoreError) is followed by ``quiet_after_outage``
        seconds without reaping: the leases that lapsed meanwhile are mostly those of live workers
        that could not renew them either, and renew or settle them within a lease once the store
        is back. Reaping them first would throw finished work away and run it again.
        """
        try:
            return await self._pass()
        except StoreError:
            self._quiet_until = time.monotonic() + self._quiet_after_outage
            raise

    async def _pass(self) -> int:
        if time.monotonic() < self._quiet_until:
            log.info(
                "reaper: the store was unreachable lately; leaving lapsed leases to their workers for now"
            )
            return 0
        # Leases are written in the store's clock; judged in ours, a worker whose clock is
        # behind would look dead while it runs (and one ahead would look alive when gone).
        before = self._store.now() - timedelta(seconds=self._grace)
        settled = 0
        for task in await self._store.list_lapsed(before=before, limit=self._batch):
            done = await self._reap(task, before)
            if done is not None:
                settled += 1
                log.warning(
                    "reaped task %s (attempt %d, node %s): now %s",
                    task.id,
                    task.retry_count,
                    task.execution_node_id,
                    done.status,
                )
        self.reaped += settled
        if self._fleet is not None:
            # After the quiet period only: workers could not beat during an outage either.
            await self._fleet.sweep()
        if self._targets is not None:
            await self._targets.expire()
        now = time.monotonic()
        if now - self._last_reconcile >= self._parent_idle:
            # Recounting lists every child of each idle parent: once per idle period is enough.
            self._last_reconcile = now
            finished = await self._aggregator.reconcile(idle_for=self._parent_idle, limit=self._batch)
            if finished:
                log.warning("finished %d parent(s) whose last roll-up had been lost", finished)
        if now - self._last_purge >= self._retention_interval:
            self._last_purge = now
            await self.purge()
            await self.purge_audit()
            await self._store.prune_rate_limits()
            if self._fleet is not None:
                await self._fleet.prune()
        return settled

    async def purge(self) -> int:
        """Retention: delete finished tasks older than ``retention_seconds``, a bounded number of
        batches per pass (the rest waits for the next); returns how many."""
        purged = await _in_batches(self._store.purge_finished, self._retention, "task(s) finished")
        self.purged += purged
        return purged

    async def purge_audit(self) -> int:
        """Retention of the audit log: delete entries older than ``audit_retention_seconds``,
        a bounded number of batches per pass; returns how many."""
        purged = await _in_batches(self._store.purge_audit, self._audit_retention, "audit entr(ies) made")
        self.audit_purged += purged
        return purged

    async def _reap(self, task: BackgroundTask, before: datetime) -> BackgroundTask | None:
        attempt = task.retry_count
        policy = self._policy(task.task_type)
        once = self._at_most_once(task.task_type)
        retry = policy.attempts_left(attempt) and not once
        lost = f"worker {task.execution_node_id} stopped renewing its lease ({task.lease_until})"
        if once:
            lost += "; an at-most-once task is not run again (it may have run in part): replay it to"
        error = ErrorInfo(
            type="WorkerLost",
            message=lost,
            attempt=attempt,
            node_id=self._node_id,
            reason=DeadLetterReason.LEASE_EXPIRED if retry or once else DeadLetterReason.ATTEMPTS_EXHAUSTED,
        )
        common = {
            "task_id": task.id,
            "task_type": task.task_type,
            "origin": Origin.REAPER,
            "attempt": attempt,
            "node_id": self._node_id,
        }
        if retry:
            delay = policy.delay_after(attempt)
            event = TaskRetrying(
                **common,
                error=error,
                delay_seconds=delay,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
                lapsed_before=before,
            )
            delivery = await self._bus.publish(event, task)
            return delivery.task if delivery.accepted else None
        failed = await self._bus.publish(TaskFailed(**common, error=error, lapsed_before=before), task)
        if not failed.accepted:
            return None
        dead = await self._bus.publish(TaskDeadLettered(**common, reason=error.reason or ""), failed.task)
        if dead.accepted and dead.task is not None:
            await self._record_dead_letter(dead.task, error)
        return dead.task if dead.accepted else failed.task

    async def _record_dead_letter(self, task: BackgroundTask, error: ErrorInfo) -> None:
        """Its message is gone with the worker (or is acked as a skip when it comes back), so no
        DLQ consumer will see it: record it here, for operators to list and replay."""
        await record_dead_task(
            self._store, task, reason=error.reason or DeadLetterReason.ATTEMPTS_EXHAUSTED, error=error
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set."""
        await run_periodically(self.run_once, stop, interval=self._interval, name="reaper")


async def _in_batches(purge: Callable[..., Awaitable[int]], retention: float | None, what: str) -> int:
    """Call ``purge(before=…, limit=PURGE_BATCH)`` for what is older than ``retention`` seconds
    (None: nothing), up to ``PURGE_BATCHES_PER_PASS`` times, until a batch comes back short."""
    if retention is None:
        return 0
    before = utcnow() - timedelta(seconds=retention)
    purged = 0
    for _ in range(PURGE_BATCHES_PER_PASS):
        n = await purge(before=before, limit=PURGE_BATCH)
        purged += n
        if n < PURGE_BATCH:
            break
    if purged:
        log.info("retention: deleted %d %s before %s", purged, what, before.isoformat())
    return purged
