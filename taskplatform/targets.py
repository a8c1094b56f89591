"""Aimed tasks at submission: check that their target can run them, and fan ``mode: each`` out;
and the expiry of aimed tasks whose workers stayed away (``TargetExpiry``).

A task aimed at a node (``{"node": "db-1"}``) is accepted when that node has registered (in any
state: an offline node's queue keeps the task for it, up to ``target_timeout``) and serves the
task's type; it then goes to the node's queue (``TaskMessage.target_route``). A task aimed at
labels with ``mode: any`` is accepted when some registered worker carries them and serves the
type; it goes to its selector's queue, which every such worker consumes.

A task aimed at labels with ``mode: each`` becomes a parent and one child per worker that is
online now, carries the labels and serves the type; each child is aimed at its worker's node
and has the parent's type and parameters. The parent runs nowhere itself: it is stored RUNNING,
waiting for its children (the sub-task machinery rolls it up: COMPLETED, or
COMPLETED_WITH_ERRORS naming each failed child, and a cancel cascades to the children).
Child ids are derived from the parent's id and the node, so each node appears once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from taskplatform.deadletters.capture import record_dead_task
from taskplatform.errors import UnreachableTargetError
from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskDeadLettered
from taskplatform.models import (
    BackgroundTask,
    DeadLetter,
    ErrorInfo,
    OutboxState,
    OutboxStatus,
    TaskStatus,
    utcnow,
)
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.models.target import TaskTarget
from taskplatform.models.worker import WorkerRecord
from taskplatform.store.workers import WorkerFilter, WorkerPage

log = logging.getLogger(__name__)

#: The most children one request's ``mode: each`` tasks fan out to, together (one fan-out to
#: more workers than this is refused, and so is a bulk whose fan-outs add up to more).
MAX_FAN_OUT = 1000
#: Workers read per registry page while looking for a fan-out's.
WORKER_PAGE = 500
_CHILD_NAMESPACE = uuid.UUID("8c1f4d6e-3b0a-4f6e-9a51-2d7c0b9e4a11")


class WorkerLookup(Protocol):
    async def get_worker(self, node_id: str) -> WorkerRecord | None: ...

    async def list_workers(
        self, filters: WorkerFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> WorkerPage: ...


@dataclass
class Plan:
    """What to store and what to publish for tasks submitted together (a fan-out's parent is
    stored, not published; its children are both)."""

    stored: list[BackgroundTask] = field(default_factory=list)
    published: list[BackgroundTask] = field(default_factory=list)
    #: Fan-out children in the plan, all fan-outs together.
    children: int = 0


def child_id(parent_id: str, node_id: str) -> str:
    """The id of a fan-out parent's child on ``node_id``: the same for the same pair."""
    return str(uuid.uuid5(_CHILD_NAMESPACE, f"{parent_id}\x00{node_id}"))


class TargetPlanner:
    """Checks aimed tasks against the fleet registry and expands fan-outs (see the module)."""

    def __init__(self, store: WorkerLookup) -> None:
        self._store = store

    async def plan(self, tasks: Sequence[BackgroundTask]) -> Plan:
        """The plan for ``tasks``; UnreachableTargetError naming every task at fault (by
        position) when any cannot run where it is aimed."""
        plan = Plan()
        problems: list[tuple[int, str]] = []
        nodes: dict[str, WorkerRecord | None] = {}
        matching: dict[tuple[str, tuple[tuple[str, str], ...]], list[WorkerRecord]] = {}
        for position, task in enumerate(tasks):
            target = task.target
            problem: str | None = None
            if target is None:
                pass
            elif target.node is not None:
                if target.node not in nodes:
                    nodes[target.node] = await self._store.get_worker(target.node)
                problem = _node_problem(task, target.node, nodes[target.node])
            elif target.mode == "any":
                if not await self._workers_with(target, task.task_type, online=None, most=1):
                    problem = _no_workers(task, target, registered=True)
            else:
                problem = await self._fan_out(plan, task, target, matching)
                if problem is None:
                    continue  # the plan has the parent and its children
            if problem is not None:
                problems.append((position, problem))
                continue
            plan.stored.append(task)
            plan.published.append(task)
        if problems:
            raise UnreachableTargetError(problems)
        return plan

    async def _fan_out(
        self,
        plan: Plan,
        task: BackgroundTask,
        target: TaskTarget,
        matching: dict[tuple[str, tuple[tuple[str, str], ...]], list[WorkerRecord]],
    ) -> str | None:
        """Add ``task``'s parent and one child per matching online worker to ``plan``, or say
        why not (none online, or more children than one request may make)."""
        assert target.labels is not None  # the model allows nodes or labels
        key = (task.task_type, tuple(sorted(target.labels.items())))
        if key not in matching:  # the registry is read once per labels and type in a request
            most = MAX_FAN_OUT + 1
            matching[key] = await self._workers_with(target, task.task_type, online=True, most=most)
        workers = matching[key]
        if not workers:
            return _no_workers(task, target)
        if len(workers) > MAX_FAN_OUT:
            return f"labels {_shown(target)} match {len(workers)} workers, more than {MAX_FAN_OUT}"
        if plan.children + len(workers) > MAX_FAN_OUT:
            return (
                f"labels {_shown(target)} match {len(workers)} workers: with the {plan.children} children of "
                f"the request's earlier fan-outs that is more than {MAX_FAN_OUT} for one request; "
                "submit it in a request of its own"
            )
        parent, children = fan_out(task, workers)
        plan.stored.extend([parent, *children])
        plan.published.extend(children)
        plan.children += len(children)
        return None

    async def _workers_with(
        self, target: TaskTarget, task_type: str, *, online: bool | None, most: int
    ) -> list[WorkerRecord]:
        """Workers carrying ``target``'s labels and serving ``task_type`` (online ones only, or
        any registered with ``online=None``), up to about ``most``."""
        return await workers_with(self._store, target.labels or {}, task_type, online=online, most=most)


async def workers_with(
    store: WorkerLookup, labels: Mapping[str, str], task_type: str, *, online: bool | None, most: int
) -> list[WorkerRecord]:
    """The registry's workers carrying ``labels`` and serving ``task_type`` (``online``: only
    those present, or absent; None: any), read page by page until ``most`` are found."""
    found: list[WorkerRecord] = []
    cursor: str | None = None
    filters = WorkerFilter(online=online, labels=dict(labels))
    while True:
        page = await store.list_workers(filters, limit=WORKER_PAGE, cursor=cursor)
        found.extend(w for w in page.items if task_type in w.task_types)
        cursor = page.next_cursor
        if cursor is None or len(found) >= most:
            return found


def _shown(target: TaskTarget) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((target.labels or {}).items()))


def _no_workers(task: BackgroundTask, target: TaskTarget, *, registered: bool = False) -> str:
    which = "registered" if registered else "online"
    return f"no {which} worker carries labels {_shown(target)} and serves {task.task_type!r}"


def _node_problem(task: BackgroundTask, node: str, record: WorkerRecord | None) -> str | None:
    if record is None:
        return f"no worker node {node!r} has registered: `GET /api/v1/workers` lists the nodes"
    if task.task_type not in record.task_types:
        serves = ", ".join(record.task_types) or "nothing"
        return f"worker node {node!r} does not serve {task.task_type!r} (it serves: {serves})"
    return None


def fan_out(
    task: BackgroundTask, workers: Sequence[WorkerRecord]
) -> tuple[BackgroundTask, list[BackgroundTask]]:
    """``task`` as a fan-out parent waiting for its children, and a child on each worker."""
    assert task.target is not None
    timeout = task.target.target_timeout
    now = utcnow()
    parent = task.model_copy(
        update={
            "status": TaskStatus.RUNNING,
            "awaiting_children": True,
            "started_at": now,
            "outbox": OutboxState(status=OutboxStatus.PUBLISHED, published_at=now),
        }
    )
    children = [
        BackgroundTask(
            id=child_id(task.id, worker.node_id),
            task_type=task.task_type,
            user_id=task.user_id,
            parameters=task.parameters,
            priority=task.priority,
            tags=task.tags,
            metadata=task.metadata,
            parent_task_id=task.id,
            target=TaskTarget(node=worker.node_id, target_timeout=timeout),
            created_at=now,
            updated_at=now,
        )
        for worker in sorted(workers, key=lambda w: w.node_id)
    ]
    return parent, children


class ExpiryStore(WorkerLookup, Protocol):
    def now(self) -> datetime: ...

    async def list_aimed_waiting(
        self, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> list[BackgroundTask]: ...

    async def upsert_dead_letter(self, record: DeadLetter) -> object: ...


class TargetExpiry:
    """Fails the aimed tasks whose node stayed offline past their ``target_timeout``.

    Run by every process with the reaper, after the fleet sweep. A waiting task (QUEUED, or
    RETRYING after its node vanished mid-attempt) is due once its node has been absent for
    ``target_timeout`` seconds, counted from the later of the node's last heartbeat and the
    task's last change (its submission, its retry). It is dead-lettered with reason
    ``target-offline`` (a dead-letter record, so operators list and replay it once the node is
    back) through the event bus: the store's guard leaves a task the node claimed meanwhile
    alone. Its message, still in the node's queue, is skipped when the node returns.

    A pass reads ``batch`` waiting tasks, on from where the last pass stopped, and starts over
    from the oldest once it reached the newest: every waiting task is looked at within
    (waiting tasks / ``batch``) passes, however many of the oldest wait for a node that is
    online (those stay, and would otherwise hide every task behind them).
    """

    def __init__(self, store: ExpiryStore, bus: EventBus, *, node_id: str, batch: int = 200) -> None:
        self._store = store
        self._bus = bus
        self._node_id = node_id
        self._batch = batch
        self._after: tuple[datetime, str] | None = None
        self.expired = 0

    async def expire(self) -> int:
        """One pass; how many tasks it dead-lettered."""
        now = self._store.now()
        found: dict[tuple[str, ...], list[WorkerRecord]] = {}
        done = 0
        page = await self._store.list_aimed_waiting(limit=self._batch, after=self._after)
        self._after = (page[-1].created_at, page[-1].id) if len(page) == self._batch else None
        for task in page:
            target = task.target
            assert target is not None  # what the query finds
            key, where = self._where(task.task_type, target)
            if key not in found:
                found[key] = await self._candidates(task.task_type, target)
            records = found[key]
            if any(r.online_at(now) for r in records):
                continue
            last_seen = max((r.last_seen_at for r in records), default=None)
            since = max(task.updated_at, last_seen) if last_seen is not None else task.updated_at
            waited = (now - since).total_seconds()
            if waited < target.target_timeout:
                continue
            gone = f"offline since {last_seen.isoformat()}" if last_seen is not None else "gone"
            why = (
                f"{where} is {gone}: the task waited {waited:.0f}s for it (target_timeout "
                f"{target.target_timeout:g}s); replay it once it is back"
            )
            if await self._dead_letter(task, why):
                done += 1
        self.expired += done
        return done

    @staticmethod
    def _where(task_type: str, target: TaskTarget) -> tuple[tuple[str, ...], str]:
        if target.node is not None:
            return ("node", target.node), f"worker node {target.node!r}"
        shown = _shown(target)
        return ("labels", task_type, shown), f"every worker carrying labels {shown} and serving {task_type!r}"

    async def _candidates(self, task_type: str, target: TaskTarget) -> list[WorkerRecord]:
        """The workers the task may run on, whatever their state."""
        if target.node is not None:
            record = await self._store.get_worker(target.node)
            return [record] if record is not None else []
        return await workers_with(self._store, target.labels or {}, task_type, online=None, most=WORKER_PAGE)

    async def _dead_letter(self, task: BackgroundTask, why: str) -> bool:
        error = ErrorInfo(
            type="TargetOffline",
            message=why,
            attempt=task.retry_count,
            node_id=self._node_id,
            reason=DeadLetterReason.TARGET_OFFLINE,
        )
        event = TaskDeadLettered(
            task_id=task.id,
            task_type=task.task_type,
            origin=Origin.REAPER,
            attempt=task.retry_count,
            node_id=self._node_id,
            reason=DeadLetterReason.TARGET_OFFLINE.value,
            error=error,
        )
        delivery = await self._bus.publish(event, task)
        if not delivery.accepted or delivery.task is None:
            return False  # the node took it meanwhile, or someone else settled it
        log.warning("task %s dead-lettered: %s", task.id, error.message)
        await record_dead_task(
            self._store, delivery.task, reason=DeadLetterReason.TARGET_OFFLINE, error=error
        )
        return True
