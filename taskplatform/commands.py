"""Task commands: what a caller asks of a task, in one service for every front door.

Submit, read and list tasks as the caller may; cancel, amend (change a waiting task) and delete
them; replay and discard dead letters. Built once per process (``runtime.commands``); the HTTP
routes and the gRPC service call it, and the CLI and the Python client reach it through the
routes. Each command checks that the caller may see the task (another user's task is "not
found", like a missing one) and raises ``TaskNotFound`` / ``TaskConflict`` / ``CommandForbidden``
(or the dead-letter errors), which HTTP answers 404 / 409 / 403 and gRPC ``NOT_FOUND`` /
``FAILED_PRECONDITION`` / ``PERMISSION_DENIED``. Store faults (``StoreError``) pass through.
Each path, step by step: DEVELOPER_GUIDE.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from taskplatform.audit import AuditTrail
from taskplatform.auth.principal import Principal
from taskplatform.deadletters.service import BulkReplay, DeadLetterService, Replayed
from taskplatform.errors import InvalidInputError, TaskPlatformError
from taskplatform.events.bus import EventBus
from taskplatform.events.cancellation import Canceller
from taskplatform.events.models import Origin
from taskplatform.metrics.registry import Metrics
from taskplatform.models import BackgroundTask, DeadLetter, TaskStatus
from taskplatform.models.dead_letter import AuditAction
from taskplatform.outbox import OWN_PUBLISH_HOLD_SECONDS
from taskplatform.storable import ensure_storable
from taskplatform.store.base import Deletion
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.store.ports import AuditLog, Cancellation, Retention, StoreClock, TaskReads, TaskRevisions
from taskplatform.store.types import TaskFilter
from taskplatform.submission import SubmitRequest, Submitted, TaskSubmitter

if TYPE_CHECKING:
    from taskplatform.commands_bulk import BulkEntry
    from taskplatform.runtime import Runtime
    from taskplatform.submission import BulkProblem
    from taskplatform.tasks.registry import ExecutableRegistry


#: The longest a bulk replay may hold its request (it paces itself at ``rate``).
MAX_BULK_SECONDS = 600.0


class TaskNotFound(TaskPlatformError):
    """No such task, or one the caller may not see (answered alike, so ids cannot be probed)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id!r} not found")


class TaskConflict(TaskPlatformError):
    """The task is not in a state that allows the command; the message says why."""


class CommandForbidden(TaskPlatformError):
    """The caller's roles do not allow what it asked (submit a type kept for a higher role, act
    for another user, list another user's tasks); the message says why."""


class NotQueued(TaskConflict):
    """The task is not (or no longer) QUEUED: it cannot be changed."""

    def __init__(self, task: BackgroundTask | None) -> None:
        self.task = task
        status = task.status.value if task is not None else "gone"
        super().__init__(f"task {task.id if task else ''!r} is {status}; only a QUEUED task can be changed")


class BulkReplayRefused(TaskPlatformError):
    """A bulk replay refused before it started (audited); the message says what to change."""


class CommandStore(TaskReads, TaskRevisions, Retention, Cancellation, StoreClock, AuditLog, Protocol):
    """What the commands use of the store (and hand to the Canceller)."""


class TaskCommands:
    """Cancel, amend and delete tasks, each recorded in the audit log as done or refused (by
    ``actor``: the caller's subject unless named); replay and discard dead letters (delegated to
    the ``DeadLetterService``, which audits them)."""

    def __init__(
        self,
        store: CommandStore,
        submitter: TaskSubmitter,
        bus: EventBus,
        dead_letters: DeadLetterService,
        *,
        node_id: str,
        max_bulk_seconds: float = MAX_BULK_SECONDS,
        metrics: Metrics | None = None,
        registry: ExecutableRegistry | None = None,
    ) -> None:
        # the submitter's when not given: never "no registry, so no role is checked"
        self._registry = registry if registry is not None else submitter.registry
        self._store = store
        self._submitter = submitter
        self._dead_letters = dead_letters
        self._canceller = Canceller(store, bus, node_id=node_id)
        self._node_id = node_id
        self.max_bulk_seconds = max_bulk_seconds
        self.audit = AuditTrail(store, metrics)

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> TaskCommands:
        """The commands over a runtime's store, submitter, bus and dead-letter service."""
        return cls(
            runtime.store,
            runtime.submitter,
            runtime.bus,
            runtime.dead_letters,
            node_id=runtime.settings.node_id,
            metrics=runtime.metrics,
            registry=runtime.registry,
        )

    # ------------------------------------------------------------ tasks
    async def submit(
        self, request: SubmitRequest, principal: Principal, *, idempotency_key: str | None = None
    ) -> Submitted:
        """Store and publish one task for ``principal``, audited: refused (CommandForbidden,
        audited) when its type is kept for a higher role or it names another user and the caller
        is no admin; IdempotencyKeyReusedError and validation errors pass through."""
        who = principal.subject or "anonymous"
        refusal = submit_refusal(principal, self._registry, request.task_type)
        if refusal is not None:
            await self.audit.record(
                who, "submit", [], outcome=f"refused: {refusal}", details={"task_type": request.task_type}
            )
            raise CommandForbidden(refusal)
        owned = request.model_copy(update={"user_id": owner_of(principal, request.user_id)})
        # Idempotency keys are scoped by the task's user id, so by the caller here.
        submitted = await self._submitter.submit(owned, idempotency_key=idempotency_key)
        if submitted.created:
            details = {"task_type": request.task_type}
            await self.audit.record(who, "submit", [submitted.task.id], details=details)
        return submitted

    async def submit_bulk(
        self, entries: Sequence[BulkEntry], principal: Principal, *, problems: Sequence[BulkProblem] = ()
    ) -> list[Submitted]:
        """Store and publish many tasks for ``principal``, all or nothing (``commands_bulk.py``):
        BulkForbidden, BulkSubmissionRefused."""
        from taskplatform.commands_bulk import submit_bulk  # it builds on this module's rules

        return await submit_bulk(
            entries,
            principal,
            submitter=self._submitter,
            registry=self._registry,
            audit=self.audit,
            problems=problems,
        )

    async def find(self, task_id: str, principal: Principal) -> BackgroundTask:
        """The task, if ``principal`` may see it (``auth.SYSTEM``, the platform itself, sees all).
        Required in every command: a forgotten principal must not mean "sees every task"."""
        if principal.can_see_all:
            task = await self._store.get(task_id)
        elif principal.subject is not None:
            # The owner is part of the query: another user's task is not even loaded, so it
            # answers as fast as a missing one (its existence and size cannot be timed).
            task = await self._store.get_visible(task_id, user_id=principal.subject)
        else:
            task = None
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def cancel(self, task_id: str, principal: Principal, *, actor: str | None = None) -> BackgroundTask:
        """QUEUED, RETRYING or a parent waiting for its children: CANCELLED now. RUNNING: its
        worker is asked to stop it (``cancel_requested``). Finished: TaskConflict."""
        async with self._audited(actor, principal, "cancel", task_id) as done:
            task = await self._cancel(task_id, principal)
            done["status"] = task.status.value
        return task

    async def _cancel(self, task_id: str, principal: Principal) -> BackgroundTask:
        await self.find(task_id, principal)  # owners never change: checking first is enough
        task = await self._canceller.request(task_id, origin=Origin.API)
        if task is None:
            raise TaskNotFound(task_id)
        running = task.status is TaskStatus.RUNNING and task.cancel_requested
        if not running and task.status is not TaskStatus.CANCELLED:
            raise TaskConflict(f"task {task_id!r} is already {task.status.value}; it cannot be cancelled")
        return task

    async def amend(
        self,
        task_id: str,
        principal: Principal,
        *,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> BackgroundTask:
        """Set the given fields of the task while it is QUEUED (NotQueued otherwise)."""
        changed = [
            n for n, v in (("priority", priority), ("tags", tags), ("metadata", metadata)) if v is not None
        ]
        async with self._audited(actor, principal, "patch", task_id, fields=changed):
            return await self._amend(task_id, principal, priority=priority, tags=tags, metadata=metadata)

    async def _amend(
        self,
        task_id: str,
        principal: Principal,
        *,
        priority: int | None,
        tags: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
    ) -> BackgroundTask:
        """The change (see ``amend``).

        A new priority takes a new message on its priority's queue: the stored change comes
        first, with the outbox pending and held for this call, then the publish; the message
        already queued names the old priority and loses its claim when it arrives. If the
        publish fails, the relay publishes once the hold ends.
        """
        task = await self.find(task_id, principal)
        if task.status is not TaskStatus.QUEUED:
            raise NotQueued(task)
        if tags is not None:
            ensure_storable(list(tags), ("tags",))
            tags = list(dict.fromkeys(tags))
        if metadata is not None:
            ensure_storable(metadata, ("metadata",))
        if priority == task.priority:
            priority = None  # the queued message is right already
        if priority is None and tags is None and metadata is None:
            return task
        changed = await self._store.amend_queued(
            task.id,
            priority=priority,
            tags=tags,
            metadata=metadata,
            publish_hold_until=self._store.now() + timedelta(seconds=OWN_PUBLISH_HOLD_SECONDS),
            owner=self._node_id,
        )
        if changed is None:
            raise NotQueued(await self._store.get(task.id))
        if priority is not None:
            await self._submitter.publish_stored([changed], owner=self._node_id)
        return changed

    async def delete(self, task_id: str, principal: Principal, *, actor: str | None = None) -> list[str]:
        """Delete a finished task and its sub-tasks; returns the ids deleted. TaskConflict while
        it, or one of its sub-tasks, has not finished, and for a sub-task (it goes with its
        parent). Its dead-letter record, if any, stays."""
        async with self._audited(actor, principal, "delete", task_id) as done:
            deleted = await self._delete(task_id, principal)
            done["deleted"] = len(deleted)
        return deleted

    @contextlib.asynccontextmanager
    async def _audited(
        self, actor: str | None, principal: Principal, action: AuditAction, task_id: str, **details: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Record ``action`` on ``task_id`` once it is done (``ok``, with what the body adds to
        the yielded details) or refused (``refused: why``; the refusal is raised on)."""
        who = actor or principal.subject or "anonymous"
        done: dict[str, Any] = dict(details)
        try:
            yield done
        except (TaskNotFound, TaskConflict, InvalidInputError) as exc:
            await self.audit.record(who, action, [task_id], outcome=f"refused: {exc}", details=done)
            raise
        await self.audit.record(who, action, [task_id], details=done)

    async def _delete(self, task_id: str, principal: Principal) -> list[str]:
        await self.find(task_id, principal)
        outcome = await self._store.delete_task(task_id)
        if outcome.result is Deletion.NOT_FOUND:
            raise TaskNotFound(task_id)
        blocking = outcome.blocking
        if outcome.result is Deletion.SUB_TASK and blocking is not None:
            raise TaskConflict(
                f"task {task_id!r} is a sub-task of {blocking.parent_task_id!r}: "
                "it is deleted with its parent"
            )
        if outcome.result is Deletion.ACTIVE:
            what = "it" if blocking is None or blocking.id == task_id else f"its sub-task {blocking.id!r}"
            status = blocking.status.value if blocking is not None else "active"
            raise TaskConflict(
                f"task {task_id!r} cannot be deleted: {what} is {status}; cancel it or wait for it to finish"
            )
        return list(outcome.deleted)

    # ------------------------------------------------------------ dead letters
    async def dead_letter(self, record_id: str) -> DeadLetter:
        """One dead letter (DeadLetterNotFound)."""
        return await self._dead_letters.get(record_id)

    async def replay(
        self, record_id: str, *, actor: str, parameters: Mapping[str, Any] | None = None
    ) -> Replayed:
        """Send a dead letter's task back to the queue (DeadLetterNotFound, DeadLetterConflict)."""
        return await self._dead_letters.replay(record_id, actor=actor, parameters=parameters)

    async def replay_many(
        self, filters: DeadLetterFilter, *, actor: str, limit: int, dry_run: bool, rate: float | None
    ) -> BulkReplay:
        """Replay pending dead letters by filter, at ``rate`` per second (default: the
        service's). BulkReplayRefused (audited) when it could take over ``max_bulk_seconds``."""
        per_second = rate if rate is not None else self._dead_letters.default_rate
        if not dry_run and limit / per_second > self.max_bulk_seconds:
            why = (
                f"replaying up to {limit} at {per_second:g}/s could take {limit / per_second:.0f}s; keep "
                f"limit / rate within {self.max_bulk_seconds:.0f}s (raise rate, or lower limit and repeat)"
            )
            details = {"limit": limit, "rate": per_second}
            await self._dead_letters.refuse_bulk(filters, actor=actor, why=why, details=details)
            raise BulkReplayRefused(why)
        return await self._dead_letters.replay_many(
            filters, actor=actor, limit=limit, dry_run=dry_run, rate=rate
        )

    async def discard(self, record_id: str, *, actor: str) -> DeadLetter:
        """Give a dead letter up (DeadLetterNotFound, DeadLetterConflict)."""
        return await self._dead_letters.discard(record_id, actor=actor)


def submit_refusal(principal: Principal, registry: ExecutableRegistry, task_type: str) -> str | None:
    """Why ``principal`` may not submit ``task_type`` (its executable's ``submit_role``), or None.
    Unknown types pass here: validation names them."""
    if task_type not in registry:
        return None
    role = registry.get(task_type).submit_role
    if role is None or principal.has(role):
        return None
    held = ", ".join(sorted(r.value for r in principal.roles)) or "none"
    return f"task type {task_type!r} may be submitted by the {role.value} role or above (this token: {held})"


def owner_of(principal: Principal, requested: str | None) -> str | None:
    """The user a submission belongs to: the caller, or (admins only) whom it names."""
    if requested is None or requested == principal.subject:
        return principal.subject  # None only with authentication disabled
    if not principal.is_admin:
        raise CommandForbidden(
            f"only an admin may submit for another user: user_id {requested!r} is not the token's "
            "subject; leave user_id out"
        )
    return requested


def visible_filter(principal: Principal, filters: TaskFilter) -> TaskFilter:
    """``filters`` as ``principal`` may list: operators and admins every user's tasks, a
    submitter its own only (CommandForbidden when it names another user)."""
    if principal.can_see_all:
        return filters
    if filters.user_id is not None and filters.user_id != principal.subject:
        raise CommandForbidden("a submitter lists its own tasks only: leave user_id out or give your own")
    return filters.model_copy(update={"user_id": principal.subject})


def shown(principal: Principal, task: BackgroundTask) -> BackgroundTask:
    """The task as this caller may read it: a submitter gets its error's type and message (and
    attempt, reason, time) but not the traceback or the worker node, which carry server paths,
    line numbers and host names; operators and admins get everything."""
    error = task.error_info
    if principal.can_see_all or error is None:
        return task
    redacted = error.model_copy(update={"traceback": None, "node_id": None})
    return task.model_copy(update={"error_info": redacted})
