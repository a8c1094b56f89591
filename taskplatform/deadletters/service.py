"""What operators do with dead letters: replay (one, or many by filter), discard. Audited."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from taskplatform.errors import InvalidInputError, TaskPlatformError, UnknownTaskTypeError
from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskReplayed
from taskplatform.models import AuditEntry, BackgroundTask, DeadLetter, DeadLetterStatus, TaskStatus, utcnow
from taskplatform.models.dead_letter import AuditAction
from taskplatform.storable import ensure_storable
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.store.ports import AuditLog, DeadLetters, TaskReads
from taskplatform.submission import TaskSubmitter
from taskplatform.tasks.registry import ExecutableRegistry

log = logging.getLogger(__name__)

#: Statuses a task may be replayed from.
REPLAYABLE = frozenset({TaskStatus.DEAD_LETTER, TaskStatus.FAILED})
#: Most records one bulk replay takes.
MAX_BULK = 1000


class DeadLetterNotFound(TaskPlatformError):
    """No dead letter with that id."""


class DeadLetterConflict(TaskPlatformError):
    """The dead letter cannot be replayed or discarded in its current state."""


@dataclass(frozen=True)
class Replayed:
    """One replay: the record after it and the task, back in the queue."""

    record: DeadLetter
    task: BackgroundTask


@dataclass
class BulkReplay:
    """What a bulk replay matched, replayed, and could not replay (id -> why)."""

    dry_run: bool
    matched: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class DeadLetterAdminStore(TaskReads, DeadLetters, AuditLog, Protocol):
    """What replaying and discarding use of the store."""


class DeadLetterService:
    """Replays and discards dead letters; every action is written to the audit log."""

    def __init__(
        self,
        store: DeadLetterAdminStore,
        registry: ExecutableRegistry,
        bus: EventBus,
        submitter: TaskSubmitter,
        *,
        node_id: str,
        default_rate: float = 50.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._bus = bus
        self._submitter = submitter
        self._node_id = node_id
        self.default_rate = default_rate

    async def get(self, record_id: str) -> DeadLetter:
        record = await self._store.get_dead_letter(record_id)
        if record is None:
            raise DeadLetterNotFound(f"dead letter {record_id!r} not found")
        return record

    async def replay(
        self, record_id: str, *, actor: str, parameters: Mapping[str, Any] | None = None
    ) -> Replayed:
        """Send the record's task back to the queue (retry count reset, through the outbox),
        with ``parameters`` replacing its own when given. Audited, also when it fails."""
        try:
            replayed = await self._replay(record_id, actor=actor, parameters=parameters)
        except (DeadLetterNotFound, DeadLetterConflict) as exc:
            await self._audit(
                actor, "replay", [record_id], outcome=f"refused: {exc}", overridden=parameters is not None
            )
            raise
        except (ValidationError, UnknownTaskTypeError, InvalidInputError) as exc:
            await self._audit(
                actor,
                "replay",
                [record_id],
                outcome=f"refused: invalid parameters: {invalid_parameters(exc)}",
                overridden=parameters is not None,
            )
            raise
        await self._audit(
            actor,
            "replay",
            [record_id],
            outcome="ok",
            overridden=parameters is not None,
            details={"task_id": replayed.task.id, "generation": replayed.task.replays},
            task_ids=[replayed.task.id],
        )
        return replayed

    async def _replay(self, record_id: str, *, actor: str, parameters: Mapping[str, Any] | None) -> Replayed:
        record = await self.get(record_id)
        if record.status is not DeadLetterStatus.PENDING:
            raise DeadLetterConflict(
                f"dead letter {record_id!r} was {record.status.value} already; "
                "it can be replayed again only if its task dies again"
            )
        if record.task_id is None:
            raise DeadLetterConflict(f"dead letter {record_id!r} names no task; there is nothing to replay")
        task = await self._store.get(record.task_id)
        if task is None:
            raise DeadLetterConflict(f"task {record.task_id!r} of dead letter {record_id!r} no longer exists")
        if task.status not in REPLAYABLE:
            if record.kind == "message":
                raise DeadLetterConflict(
                    f"dead letter {record_id!r} is a message-level dead letter (a malformed message "
                    f"naming task {task.id!r}); the task is {task.status.value}, not dead, so there is "
                    "nothing to replay: nothing was changed"
                )
            raise DeadLetterConflict(
                f"task {task.id!r} is {task.status.value} (generation {task.replays}); "
                "only a dead task can be replayed"
            )
        if task.replays != record.generation:
            raise DeadLetterConflict(
                f"dead letter {record_id!r} belongs to generation {record.generation} of task {task.id!r}, "
                f"which is {task.status.value} at generation {task.replays}; replay its current dead letter"
            )
        checked = self._check_parameters(task.task_type, parameters) if parameters is not None else None
        event = TaskReplayed(
            task_id=task.id,
            task_type=task.task_type,
            origin=Origin.API,
            node_id=self._node_id,
            expected_replays=task.replays,
            parameters=checked,
            dead_letter_id=record.id,
            actor=actor,
        )
        delivery = await self._bus.publish(event, task)
        if not delivery.accepted or delivery.task is None:
            raise DeadLetterConflict(f"task {task.id!r} changed while it was being replayed; try again")
        marked = await self._store.mark_dead_letter_replayed(
            record.id, generation=record.generation, at=utcnow()
        )
        await self._submitter.publish_stored([delivery.task])
        log.warning("dead letter %s replayed by %s: task %s is QUEUED again", record.id, actor, task.id)
        return Replayed(marked or record, delivery.task)

    def _check_parameters(self, task_type: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Validate replacement parameters (UnknownTaskTypeError, pydantic ValidationError)."""
        executable = self._registry.get(task_type)
        dumped = executable.Params.model_validate(dict(parameters)).model_dump(mode="json")
        ensure_storable(dumped, ("parameters",))
        return dumped

    async def refuse_bulk(
        self, filters: DeadLetterFilter, *, actor: str, why: str, details: dict[str, Any] | None = None
    ) -> None:
        """Audit a bulk replay refused before it started (``why``: what was wrong)."""
        await self._audit(
            actor,
            "bulk_replay",
            [],
            outcome=f"refused: {why}",
            filters=filters.model_dump(mode="json", exclude_none=True),
            details=details,
        )

    async def replay_many(
        self,
        filters: DeadLetterFilter,
        *,
        actor: str,
        limit: int = 100,
        dry_run: bool = False,
        rate: float | None = None,
    ) -> BulkReplay:
        """Replay up to ``limit`` pending records matching ``filters``, at most ``rate`` per
        second (so a bulk replay cannot flood the workers); ``dry_run`` only lists them."""
        per_second = rate if rate is not None else self.default_rate
        problem = None
        if not 1 <= limit <= MAX_BULK:
            problem = f"limit must be between 1 and {MAX_BULK}, got {limit}"
        elif per_second <= 0:
            problem = f"rate must be positive, got {per_second}"
        if problem is not None:
            await self.refuse_bulk(filters, actor=actor, why=problem, details={"limit": limit, "rate": rate})
            raise ValueError(problem)
        pending = filters.model_copy(update={"status": DeadLetterStatus.PENDING})
        result = BulkReplay(dry_run=dry_run, matched=await self._matching(pending, limit))
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not dry_run:
            for n, record_id in enumerate(result.matched):
                # Paced: the n-th replay starts no earlier than n / rate seconds in.
                await asyncio.sleep(max(0.0, started + n / per_second - loop.time()))
                try:
                    await self._replay(record_id, actor=actor, parameters=None)
                except (DeadLetterNotFound, DeadLetterConflict) as exc:
                    result.failed[record_id] = str(exc)
                else:
                    result.replayed.append(record_id)
        result.seconds = round(loop.time() - started, 3)
        outcome = "ok" if not result.failed else ("partial" if result.replayed else "failed")
        await self._audit(
            actor,
            "bulk_replay",
            result.matched,
            outcome="dry run" if dry_run else outcome,
            dry_run=dry_run,
            filters=filters.model_dump(mode="json", exclude_none=True),
            details={
                "limit": limit,
                "rate": per_second,
                "replayed": len(result.replayed),
                "failed": result.failed,
                "seconds": result.seconds,
            },
        )
        return result

    async def _matching(self, filters: DeadLetterFilter, limit: int) -> list[str]:
        ids: list[str] = []
        cursor: str | None = None
        while len(ids) < limit:
            page = await self._store.list_dead_letters(
                filters, limit=min(500, limit - len(ids)), cursor=cursor
            )
            ids.extend(r.id for r in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return ids[:limit]

    async def discard(self, record_id: str, *, actor: str) -> DeadLetter:
        """Give the record up: no longer pending; its task stays DEAD_LETTER."""
        record = await self.get(record_id)
        discarded = await self._store.mark_dead_letter_discarded(record_id, at=utcnow())
        tasks = [record.task_id] if record.task_id is not None else []
        if discarded is None:
            refused = f"refused: it was {record.status.value}"
            await self._audit(actor, "discard", [record_id], outcome=refused, task_ids=tasks)
            raise DeadLetterConflict(f"dead letter {record_id!r} was {record.status.value} already")
        await self._audit(actor, "discard", [record_id], outcome="ok", task_ids=tasks)
        return discarded

    async def _audit(
        self,
        actor: str,
        action: AuditAction,
        ids: list[str],
        *,
        outcome: str,
        overridden: bool = False,
        dry_run: bool = False,
        filters: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        task_ids: list[str] | None = None,
    ) -> None:
        entry = AuditEntry(
            actor=actor,
            action=action,
            dead_letter_ids=ids,
            task_ids=task_ids or [],
            filter=filters,
            dry_run=dry_run,
            parameters_overridden=overridden,
            outcome=outcome,
            details=details or {},
        )
        await self._store.add_audit(entry)


def invalid_parameters(exc: ValidationError | UnknownTaskTypeError | InvalidInputError) -> str:
    """What was wrong with replacement parameters, in one line (as the API's 422 says it)."""
    if isinstance(exc, ValidationError):
        where = "; ".join(
            f"{'.'.join(map(str, ('parameters', *e['loc'])))}: {e['msg']}" for e in exc.errors()[:5]
        )
        return where or str(exc)
    return str(exc)
