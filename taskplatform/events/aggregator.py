"""The state aggregator: applies lifecycle events to the store, and rolls children up.

It is the bus's first critical subscriber. Each event becomes one conditional store update
chosen by its type and origin (the owner of an attempt, the reaper, an operator, the
roll-up); an update that does not apply rejects the event, unless the task's
``last_event_id`` shows this very event was applied before (a replay), which changes
nothing and is accepted again. After an event applies, the task's parent (if any) counts
the child in its new status; a parent whose children have all finished is completed by a
roll-up event of its own, and a cancelled task cancels its children (``events/cancellation.py``).
It only applies events: a caller's cancel is ``taskplatform/commands.py: TaskCommands.cancel``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from taskplatform.batching import Coalescer
from taskplatform.errors import StoreError
from taskplatform.events.attempts import attempt_record
from taskplatform.events.bus import Delivery, EventBus
from taskplatform.events.cancellation import Canceller
from taskplatform.events.models import (
    Origin,
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskReplayed,
    TaskRequeued,
    TaskRetrying,
    TaskStarted,
    TaskSubmitted,
    TaskWaiting,
)
from taskplatform.metrics.registry import Metrics
from taskplatform.models import TERMINAL, BackgroundTask, TaskStatus, utcnow
from taskplatform.models.attempt import AttemptRecord
from taskplatform.store.base import CompletionRequest
from taskplatform.store.ports import (
    AttemptHistory,
    AttemptOutcomes,
    Cancellation,
    LostWorkers,
    ParentRollups,
    TaskClaims,
    TaskReads,
    TaskRevisions,
)
from taskplatform.store.types import ParentState

log = logging.getLogger(__name__)

#: How often finishing a parent is retried when concurrent roll-ups keep changing it.
FINISH_ATTEMPTS = 5


@dataclass(frozen=True)
class _Rollup:
    parent_id: str
    child_id: str
    status: TaskStatus
    version: int


Applier = Callable[[Any, BackgroundTask | None], Awaitable[BackgroundTask | None]]


class EventStore(
    TaskReads,
    TaskClaims,
    AttemptOutcomes,
    LostWorkers,
    Cancellation,
    ParentRollups,
    TaskRevisions,
    AttemptHistory,
    Protocol,
):
    """What applying events uses of the store: one conditional update per event, roll-ups, and
    the record of each attempt that ends."""


class StateAggregator:
    """Durable task state from lifecycle events (a critical bus subscriber)."""

    name = "state-aggregator"

    def __init__(
        self,
        store: EventStore,
        bus: EventBus,
        *,
        node_id: str,
        host: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._bus = bus
        self._node_id = node_id
        self._host = host if host is not None else socket.gethostname()
        self._canceller = Canceller(store, bus, node_id=node_id)  # the cascades of a cancel
        # Concurrent completions share one statement; concurrent roll-ups of one parent, one
        # transaction (natural batching, no added latency when idle).
        self._completions: Coalescer[tuple[str, CompletionRequest], int | None] = Coalescer(
            self._complete_batch
        )
        self._rollups: Coalescer[_Rollup, ParentState | None] = Coalescer(self._rollup_batch)
        # Concurrent attempt records share one write.
        self._attempts: Coalescer[AttemptRecord, None] = Coalescer(self._attempt_batch)
        #: Attempt records that could not be stored.
        self.attempts_unrecorded = 0
        self._appliers: dict[type[TaskEvent], Applier] = {
            TaskSubmitted: self._as_given,
            TaskStarted: self._as_given,
            TaskProgress: self._progress,
            TaskWaiting: self._waiting,
            TaskRetrying: self._retrying,
            TaskRequeued: self._requeued,
            TaskCompleted: self._completed,
            TaskFailed: self._failed,
            TaskDeadLettered: self._dead_lettered,
            TaskCancelled: self._cancelled,
            TaskReplayed: self._replayed,
        }

    def attach(self) -> StateAggregator:
        """Subscribe to the bus as its first critical subscriber."""
        self._bus.add_critical(self)
        return self

    # ------------------------------------------------------------ the subscriber
    async def handle(self, delivery: Delivery) -> None:
        event = delivery.event
        during = delivery.task
        applied = await self._appliers[type(event)](event, delivery.task)
        if applied is None:
            current = await self._store.get(event.task_id)
            if current is None or current.last_event_id != event.event_id:
                delivery.task = current
                status = current.status if current is not None else "missing"
                delivery.refuse(f"task is {status} at attempt {getattr(current, 'retry_count', '-')}")
                return
            delivery.duplicate = True  # applied before; its follow-ups may not have been
            applied = current
        # The attempt's record, once its end is stored (again for a duplicate: a record written
        # again changes nothing). History, not state: a record that cannot be written is
        # logged and counted, and the event goes on (its roll-up and follow-ups must not wait
        # for it, nor its producer hand the attempt back over it).
        record = attempt_record(event, during, applied, node_id=self._node_id, host=self._host)
        if record is not None and not (self._with_completion(event, during) and not delivery.duplicate):
            try:
                await self._attempts.submit(record)
            except StoreError as exc:
                self.attempts_unrecorded += 1
                if self._metrics is not None:
                    self._metrics.history_unstored.labels("attempt").inc()
                log.error("task %s: attempt %d's record not stored: %s", event.task_id, event.attempt, exc)
        delivery.task = applied
        final = applied
        delivery.then(lambda: self._follow_up(event, final))

    async def _follow_up(self, event: TaskEvent, task: BackgroundTask) -> None:
        """Roll the task up into its parent; finish or cancel what that makes due."""
        if task.parent_task_id is not None and not isinstance(event, TaskProgress):
            parent = await self._rollups.submit(
                _Rollup(task.parent_task_id, task.id, task.status, task.version)
            )
            if parent is None:
                log.warning("task %s: parent %s not found; nothing to roll up", task.id, task.parent_task_id)
            elif parent.status is TaskStatus.CANCELLED and task.status not in TERMINAL:
                await self._canceller.request(task.id, origin=Origin.PLATFORM)
            else:
                await self.finish_if_done(parent)
        if isinstance(event, TaskCancelled) and task.sub_task_status_summary is not None:
            await self._canceller.cancel_children(task.id)
        elif isinstance(event, TaskWaiting):
            if task.cancel_requested:
                # Asked to stop while its execute was returning: the cancel still holds.
                await self._canceller.request(task.id, origin=Origin.PLATFORM)
            else:
                await self.finish_if_done(ParentState.of(task))

    # ------------------------------------------------------------ appliers
    async def _as_given(self, event: TaskEvent, task: BackgroundTask | None) -> BackgroundTask | None:
        # Creation and the first claim are written by their producers; the event reports them.
        return task if task is not None else await self._store.get(event.task_id)

    async def _progress(self, event: TaskProgress, _task: BackgroundTask | None) -> BackgroundTask | None:
        return await self._store.record_progress(
            event.task_id,
            node_id=event.node_id or "",
            attempt=event.attempt,
            progress=event.progress,
            event_id=event.event_id,
        )

    async def _waiting(self, event: TaskWaiting, _task: BackgroundTask | None) -> BackgroundTask | None:
        return await self._store.set_awaiting_children(
            event.task_id,
            node_id=event.node_id or "",
            attempt=event.attempt,
            result=event.result,
            event_id=event.event_id,
        )

    async def _retrying(self, event: TaskRetrying, _task: BackgroundTask | None) -> BackgroundTask | None:
        if event.origin is Origin.REAPER:
            return await self._reap(event, event.next_attempt_at)
        return await self._store.record_retry(
            event.task_id,
            node_id=event.node_id or "",
            attempt=event.attempt,
            error=event.error,
            next_attempt_at=event.next_attempt_at,
            outbox_hold_until=event.outbox_hold_until or self._store.now(),
            event_id=event.event_id,
        )

    async def _reap(
        self, event: TaskRetrying | TaskFailed, next_attempt_at: datetime | None
    ) -> BackgroundTask | None:
        """The reaper's settlement of a lapsed attempt: RETRYING, or FAILED without a next one."""
        return await self._store.reap(
            event.task_id,
            attempt=event.attempt,
            before=event.lapsed_before or event.occurred_at,
            error=event.error,
            next_attempt_at=next_attempt_at,
            event_id=event.event_id,
        )

    async def _requeued(self, event: TaskRequeued, _task: BackgroundTask | None) -> BackgroundTask | None:
        return await self._store.release_claim(
            event.task_id, node_id=event.node_id or "", attempt=event.attempt, event_id=event.event_id
        )

    async def _completed(self, event: TaskCompleted, task: BackgroundTask | None) -> BackgroundTask | None:
        if event.origin is Origin.CHILDREN:
            if event.expected_version is None:
                raise ValueError("a roll-up TaskCompleted needs expected_version")
            return await self._store.finish_parent(
                event.task_id,
                expected_version=event.expected_version,
                status=event.status,
                event_id=event.event_id,
            )
        record = None
        if self._with_completion(event, task):
            assert task is not None
            record = attempt_record(event, task, task, node_id=self._node_id, host=self._host)
        request = CompletionRequest(
            task_id=event.task_id,
            attempt=event.attempt,
            result=event.result,
            event_id=event.event_id,
            progress=event.progress,
            attempt_record=record,
        )
        version = await self._completions.submit((event.node_id or "", request))
        if version is None:
            return None
        if task is None or task.id != event.task_id:
            return await self._store.get(event.task_id)
        # The batched statement returns only the version; the rest is known.
        changes = self._store.completion_changes(utcnow())
        changes.update(result=event.result, version=version, last_event_id=event.event_id)
        if event.progress is not None:
            changes["progress"] = event.progress
        return task.model_copy(update=changes)

    @staticmethod
    def _with_completion(event: TaskEvent, during: BackgroundTask | None) -> bool:
        """Whether ``event``'s attempt record is written with its completion (a worker's
        completion with the producer's copy of the task) rather than on its own."""
        return (
            isinstance(event, TaskCompleted)
            and event.origin is not Origin.CHILDREN
            and during is not None
            and during.id == event.task_id
        )

    async def _attempt_batch(self, records: Sequence[AttemptRecord]) -> list[None]:
        await self._store.add_attempts(records)
        return [None] * len(records)

    async def _complete_batch(self, items: Sequence[tuple[str, CompletionRequest]]) -> list[int | None]:
        by_node: dict[str, list[CompletionRequest]] = {}
        for node, request in items:
            by_node.setdefault(node, []).append(request)
        done: dict[tuple[str, str], int] = {}
        for node, requests in by_node.items():
            versions = await self._store.record_completions(requests, node_id=node)
            done.update(((node, task_id), v) for task_id, v in versions.items())
        return [done.get((node, request.task_id)) for node, request in items]

    async def _failed(self, event: TaskFailed, _task: BackgroundTask | None) -> BackgroundTask | None:
        if event.origin is Origin.REAPER:
            return await self._reap(event, None)
        return await self._store.record_failure(
            event.task_id,
            node_id=event.node_id or "",
            attempt=event.attempt,
            error=event.error,
            status=TaskStatus.FAILED,
            event_id=event.event_id,
        )

    async def _dead_lettered(
        self, event: TaskDeadLettered, _task: BackgroundTask | None
    ) -> BackgroundTask | None:
        # Workers, the reaper and the platform (the DLQ consumer, for the task's own current
        # message) name the attempt they dead-letter: never a task under a live lease. Only an
        # operator's request (API) dead-letters whatever attempt the task is at.
        attempt = None if event.origin is Origin.API else event.attempt
        return await self._store.mark_dead_letter(
            event.task_id, error=event.error, attempt=attempt, event_id=event.event_id
        )

    async def _cancelled(self, event: TaskCancelled, _task: BackgroundTask | None) -> BackgroundTask | None:
        if event.origin is Origin.WORKER:
            return await self._store.record_cancelled(
                event.task_id, node_id=event.node_id or "", attempt=event.attempt, event_id=event.event_id
            )
        return await self._store.cancel_waiting(event.task_id, event_id=event.event_id)

    async def _replayed(self, event: TaskReplayed, _task: BackgroundTask | None) -> BackgroundTask | None:
        return await self._store.replay_task(
            event.task_id,
            expected_replays=event.expected_replays,
            parameters=event.parameters,
            event_id=event.event_id,
        )

    # ------------------------------------------------------------ roll-up
    async def _rollup_batch(self, items: Sequence[_Rollup]) -> list[ParentState | None]:
        by_parent: dict[str, list[_Rollup]] = {}
        for item in items:
            by_parent.setdefault(item.parent_id, []).append(item)
        parents: dict[str, ParentState | None] = {}
        for parent_id, group in by_parent.items():
            entries = [(r.child_id, r.status, r.version) for r in group]
            parents[parent_id] = await self._store.apply_rollups(parent_id, entries)
        return [parents[item.parent_id] for item in items]

    async def rollup_existing(self, children: Sequence[BackgroundTask]) -> None:
        """Count children that already existed (a retried parent submitting them again)."""
        for child in children:
            if child.parent_task_id is not None:
                parent = await self._rollups.submit(
                    _Rollup(child.parent_task_id, child.id, child.status, child.version)
                )
                if parent is not None:
                    await self.finish_if_done(parent)

    async def finish_if_done(self, parent: ParentState) -> ParentState:
        """Complete a waiting parent whose children have all finished; returns its state."""
        recounted = False
        for _ in range(FINISH_ATTEMPTS):
            summary = parent.sub_task_status_summary
            if not (parent.status is TaskStatus.RUNNING and parent.awaiting_children):
                return parent
            if summary is None or summary.pending > 0:
                return parent
            if not recounted:
                # All counted children are done. Count from the children themselves once,
                # so a child whose roll-up was lost (a crash) cannot be finished without.
                recounted = True
                parent = await self._store.rollup_children(parent.id) or parent
                continue
            status = TaskStatus.COMPLETED if summary.all_succeeded else TaskStatus.COMPLETED_WITH_ERRORS
            event = TaskCompleted(
                task_id=parent.id,
                task_type=parent.task_type,
                origin=Origin.CHILDREN,
                attempt=parent.retry_count,
                node_id=self._node_id,
                status=status,
                expected_version=parent.version,
            )
            delivery = await self._bus.publish(event)
            if delivery.accepted and delivery.task is not None:
                log.info("parent %s finished %s (%s)", parent.id, status.value, summary.model_dump())
                return ParentState.of(delivery.task)
            current = delivery.task or await self._store.get(parent.id)
            if current is None:
                return parent
            parent = ParentState.of(current)  # changed under us (another roll-up): look again
        log.warning("parent %s: could not finish after %d tries; the sweep will", parent.id, FINISH_ATTEMPTS)
        return parent

    async def reconcile(self, *, idle_for: float, limit: int = 100) -> int:
        """Recount waiting parents untouched for ``idle_for`` seconds (a lost roll-up heals
        here) and finish those whose children are done. Returns how many finished."""
        before = utcnow() - timedelta(seconds=idle_for)
        finished = 0
        for parent in await self._store.list_awaiting_parents(updated_before=before, limit=limit):
            current = await self._store.rollup_children(parent.id)
            if current is not None and (await self.finish_if_done(current)).status in TERMINAL:
                finished += 1
        return finished
