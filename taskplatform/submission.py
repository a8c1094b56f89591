"""Submitting tasks: validate, write the document, publish, mark the outbox published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskplatform.batching import Coalescer
from taskplatform.errors import (
    BrokerError,
    DuplicateTaskError,
    InvalidInputError,
    StoreError,
    StoreRefused,
    TaskPlatformError,
    UnknownTaskTypeError,
    UnreachableTargetError,
)
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.events.models import Origin, TaskSubmitted
from taskplatform.messaging.publisher import MessagePublisher
from taskplatform.models import MAX_PRIORITY, BackgroundTask, OutboxStatus, TaskMessage, utcnow
from taskplatform.models.target import TaskTarget
from taskplatform.models.task import submission_fingerprint
from taskplatform.outbox import PublishedMarker
from taskplatform.storable import MAX_TAGS, Metadata, Tags, ensure_shallow, ensure_storable
from taskplatform.store.ports import Outbox, TaskCreation, TaskReads
from taskplatform.submission_bulk import (
    MAX_BULK_TASKS,
    BulkItem,
    BulkProblem,
    BulkSubmissionRefused,
    item_problems,
)
from taskplatform.targets import TargetPlanner
from taskplatform.tasks.registry import ExecutableRegistry

log = logging.getLogger(__name__)


class SubmitRequest(BaseModel):
    """What a caller asks for. Parameters are validated against the executable's Params.

    Strict: no field is coerced (``"priority": "5"`` or ``true`` is refused, not read as 5 or 1),
    and unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task_type: str = Field(min_length=1, max_length=128)
    parameters: dict[str, Any] = Field(default_factory=dict)
    user_id: str | None = Field(default=None, max_length=255)
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)
    tags: Tags = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    #: Where the task runs: a worker node, or the workers carrying some labels (``models.target``).
    target: TaskTarget | None = None


class IdempotencyKeyReusedError(TaskPlatformError):
    """An idempotency key came back with another submission than the one that created its task
    (the API answers 422 ``idempotency_key_reused``)."""

    def __init__(self, key: str, task_id: str) -> None:
        self.key = key
        self.task_id = task_id
        super().__init__(
            f"Idempotency-Key {key!r} was used before with a different submission (task {task_id}): "
            "send the same body again to get that task, or use a new key for a new task"
        )


#: The most concurrent single submissions one insert takes.
INSERT_BATCH = 200
#: Idempotency keys of one bulk submission looked up at once.
_KEY_LOOKUPS = 8


def fingerprint(request: SubmitRequest) -> str:
    """The request's ``submission_fingerprint``: every field as the model holds it (fields left
    out count as their defaults), parameters as sent. Call it on the request as stored: with its
    owner (``user_id``) filled in."""
    return submission_fingerprint(request.model_dump(mode="json"))


@dataclass(frozen=True)
class Submitted:
    """The stored task, whether its message reached the broker already, and whether this call
    created it (False: an earlier submission with the same idempotency key did)."""

    task: BackgroundTask
    published: bool
    created: bool = True


class SubmissionStore(TaskReads, TaskCreation, Outbox, Protocol):
    """What submitting uses of the store: create, find by idempotency key, the outbox marks."""


class TaskSubmitter:
    """Turns submit requests into stored, published tasks.

    Order is what makes it safe: the document (QUEUED, outbox pending) is written first,
    then ``TaskSubmitted`` goes through the event bus (a child is counted by its parent
    there), then the message is published with confirms, then the outbox is marked
    published. A publish that fails leaves the task pending for the relay; the caller
    still gets its task id.
    """

    def __init__(
        self,
        store: SubmissionStore,
        registry: ExecutableRegistry,
        publisher: MessagePublisher,
        marker: PublishedMarker,
        bus: EventBus,
        *,
        aggregator: StateAggregator | None = None,
        node_id: str | None = None,
        targets: TargetPlanner | None = None,
    ) -> None:
        self._store = store
        self._targets = targets
        self._registry = registry
        self._publisher = publisher
        self._marker = marker
        self._bus = bus
        self._aggregator = aggregator
        self._node_id = node_id
        # Concurrent single submissions (an API process under load) share one insert.
        self._inserts: Coalescer[BackgroundTask, BaseException | None] = Coalescer(
            self._insert_together, max_batch=INSERT_BATCH
        )

    def prepare(
        self, request: SubmitRequest, *, task_id: str | None = None, parent_task_id: str | None = None
    ) -> BackgroundTask:
        """Validate ``request`` into a new task document (no I/O).

        Raises UnknownTaskTypeError or pydantic ValidationError (field errors).
        """
        executable = self._registry.get(request.task_type)
        # The input first: too deep a nesting stops the serializer below, not just the stores.
        ensure_storable(request.parameters, ("parameters",))
        params = executable.Params.model_validate(request.parameters)
        parameters = params.model_dump(mode="json")
        ensure_storable(parameters, ("parameters",))
        ensure_storable(request.user_id, ("user_id",))
        ensure_storable(request.tags, ("tags",))
        ensure_storable(request.metadata, ("metadata",))
        now = utcnow()
        extra = {"id": task_id} if task_id is not None else {}
        return BackgroundTask(
            **extra,
            task_type=request.task_type,
            user_id=request.user_id,
            parameters=parameters,
            priority=request.priority,
            tags=list(dict.fromkeys(request.tags)),
            metadata=request.metadata,
            parent_task_id=parent_task_id,
            target=request.target,
            created_at=now,
            updated_at=now,
        )

    @property
    def registry(self) -> ExecutableRegistry:
        """The task types this submitter validates against."""
        return self._registry

    async def submit(self, request: SubmitRequest, *, idempotency_key: str | None = None) -> Submitted:
        """Validate, store and publish one task.

        With ``idempotency_key``, a second submission with the same key from the same user
        returns the task the first one created instead of creating another (the store keeps
        the key unique per user); the same key with a different submission (``fingerprint``)
        raises IdempotencyKeyReusedError. Tasks stored without a fingerprint (created before
        fingerprints were kept) are returned whatever the submission.
        """
        if idempotency_key is None:
            return (await self.submit_many([request]))[0]
        ensure_storable(idempotency_key, ("idempotency_key",))
        task = self.prepare(request)  # validated first: only storable input is fingerprinted
        submitted = fingerprint(request)
        task = task.model_copy(
            update={"idempotency_key": idempotency_key, "idempotency_fingerprint": submitted}
        )
        existing = await self._store.find_by_idempotency_key(task.user_id, idempotency_key)
        if existing is None:
            try:
                return (await self.submit_prepared([task]))[0]
            except DuplicateTaskError:
                existing = await self._store.find_by_idempotency_key(task.user_id, idempotency_key)
                if existing is None:
                    raise
        if existing.idempotency_fingerprint not in (None, submitted):
            raise IdempotencyKeyReusedError(idempotency_key, existing.id)
        published = existing.outbox.status is OutboxStatus.PUBLISHED
        return Submitted(existing, published=published, created=False)

    async def submit_many(self, requests: Sequence[SubmitRequest]) -> list[Submitted]:
        """Validate all first (nothing is written if one is invalid), then store and publish."""
        tasks = [self.prepare(r) for r in requests]
        return await self.submit_prepared(tasks)

    async def submit_prepared(self, tasks: Sequence[BackgroundTask]) -> list[Submitted]:
        """Store then publish documents built by :meth:`prepare`.

        Aimed tasks are checked against the fleet registry first (UnreachableTargetError, nothing
        stored) and a ``mode: each`` one becomes a parent with a child per worker
        (``targets.TargetPlanner``): the parent is returned, its children published."""
        if any(t.target is not None for t in tasks):
            return await self._submit_aimed(tasks)
        if len(tasks) == 1 and tasks[0].idempotency_key is None:
            failure = await self._inserts.submit(tasks[0])
            if failure is not None:
                raise failure
        else:
            await self._store.create_many(tasks)
        await self._announce(tasks)
        return await self._publish(tasks)

    async def _submit_aimed(self, tasks: Sequence[BackgroundTask]) -> list[Submitted]:
        if self._targets is None:
            raise UnreachableTargetError(
                [
                    (i, "this process cannot aim tasks (no fleet registry)")
                    for i, t in enumerate(tasks)
                    if t.target
                ]
            )
        plan = await self._targets.plan(tasks)
        await self._store.create_many(plan.stored)
        await self._announce(plan.stored)
        published = {s.task.id: s.published for s in await self._publish(plan.published)}
        stored = {t.id: t for t in plan.stored}  # a fan-out parent as stored: RUNNING, waiting
        return [Submitted(stored[t.id], published=published.get(t.id, True)) for t in tasks]

    async def _insert_together(self, tasks: Sequence[BackgroundTask]) -> list[BaseException | None]:
        """Insert the tasks of concurrent single submissions in one write; what each caller gets
        (None: stored). An outage fails them all, as it would one by one; a refusal of the
        batch (a row the store will not take) is retried task by task, so only that task's
        submission fails."""
        try:
            await self._store.create_many(tasks)
            return [None] * len(tasks)
        except StoreRefused:
            if len(tasks) == 1:
                raise
        except DuplicateTaskError:
            if len(tasks) == 1:
                raise
        log.info("a batch of %d submissions was refused by the store; inserting them one by one", len(tasks))
        return [await self._insert_alone(task) for task in tasks]

    async def _insert_alone(self, task: BackgroundTask) -> BaseException | None:
        try:
            await self._store.create_many([task])
        except DuplicateTaskError as exc:
            # A store that keeps the rows before a failing one (MongoDB's ordered insert) has it:
            # its id is a fresh UUID, so a row with that id is this one.
            try:
                stored = await self._store.get(task.id)
            except StoreError as lookup:
                return lookup
            return None if stored is not None else exc
        except StoreError as exc:  # refused, or an outage now: this caller's answer only
            return exc
        return None

    def prepare_bulk(
        self, items: Sequence[BulkItem], *, indexes: Sequence[int] | None = None
    ) -> tuple[list[BackgroundTask], list[BulkProblem]]:
        """Validate every item of a bulk submission (no I/O): the task documents, keyed ones with
        their key and fingerprint, and every problem found (each item's, and an idempotency key
        given twice for one user). ``indexes``: the items' positions in the request, for the
        problems (default: their positions in ``items``)."""
        positions = list(indexes) if indexes is not None else list(range(len(items)))
        tasks: list[BackgroundTask] = []
        problems: list[BulkProblem] = []
        first_with: dict[tuple[str | None, str], int] = {}
        for index, item in zip(positions, items, strict=True):
            key = item.idempotency_key
            try:
                if key is not None:
                    ensure_storable(key, ("idempotency_key",))
                task = self.prepare(item.request)
            except (UnknownTaskTypeError, InvalidInputError, ValidationError) as exc:
                problems.extend(item_problems(index, exc))
                continue
            if key is not None:
                scope = (task.user_id, key)
                if scope in first_with:
                    problems.append(
                        BulkProblem(
                            index,
                            "duplicate_idempotency_key",
                            f"idempotency key {key!r} is given to items {first_with[scope]} and {index} "
                            "of this request: one key names one task",
                            {"idempotency_key": key, "indexes": [first_with[scope], index]},
                        )
                    )
                    continue
                first_with[scope] = index
                update = {"idempotency_key": key, "idempotency_fingerprint": fingerprint(item.request)}
                task = task.model_copy(update=update)
            tasks.append(task)
        return tasks, problems

    async def submit_bulk(self, items: Sequence[BulkItem]) -> list[Submitted]:
        """Validate every item (BulkSubmissionRefused, nothing stored, if any is invalid), then
        store the new tasks in one write and publish them in one pipelined batch; see
        :meth:`submit_bulk_prepared`. Results in the items' order."""
        tasks, problems = self.prepare_bulk(items)
        if problems:
            raise BulkSubmissionRefused(problems)
        return await self.submit_bulk_prepared(tasks)

    async def submit_bulk_prepared(self, tasks: Sequence[BackgroundTask]) -> list[Submitted]:
        """Store and publish documents from :meth:`prepare_bulk`; results in their order.

        A keyed task whose key (for its user) made a task already returns that task
        (``created=False``), as :meth:`submit` does; if any such task was made by a different
        submission, BulkSubmissionRefused (``idempotency_key_reused``) before anything is
        stored. Keys a racing submission takes meanwhile are looked up again."""
        found: dict[int, BackgroundTask] = {}
        pending = list(range(len(tasks)))
        raced = False
        while True:
            keyed = [i for i in pending if tasks[i].idempotency_key is not None]
            existing = await self._existing(tasks, keyed)
            if raced and not existing:
                raise DuplicateTaskError("a bulk submission's task exists already, but not by its key")
            reused = [
                BulkProblem(
                    i,
                    "idempotency_key_reused",
                    str(IdempotencyKeyReusedError(str(tasks[i].idempotency_key), task.id)),
                    {"idempotency_key": tasks[i].idempotency_key, "task_id": task.id},
                )
                for i, task in existing.items()
                if task.idempotency_fingerprint not in (None, tasks[i].idempotency_fingerprint)
            ]
            if reused:
                raise BulkSubmissionRefused(reused)
            found.update(existing)
            pending = [i for i in pending if i not in existing]
            try:
                created = await self.submit_prepared([tasks[i] for i in pending]) if pending else []
            except DuplicateTaskError:  # a racing submission took one of the keys: look again
                raced = True
                continue
            except UnreachableTargetError as exc:  # positions among ``pending``: the items' indexes
                raise BulkSubmissionRefused(
                    [
                        BulkProblem(pending[p], "target_unreachable", message, {"loc": ["target"]})
                        for p, message in exc.problems
                    ]
                ) from None
            results = dict(zip(pending, created, strict=True))
            for i, task in found.items():
                results[i] = Submitted(task, task.outbox.status is OutboxStatus.PUBLISHED, created=False)
            return [results[i] for i in range(len(tasks))]

    async def _existing(
        self, tasks: Sequence[BackgroundTask], keyed: Sequence[int]
    ) -> dict[int, BackgroundTask]:
        """The tasks already made with the keys of ``tasks[i]`` for ``i`` in ``keyed``, by ``i``."""
        limit = asyncio.Semaphore(_KEY_LOOKUPS)

        async def find(i: int) -> BackgroundTask | None:
            async with limit:
                return await self._store.find_by_idempotency_key(
                    tasks[i].user_id, str(tasks[i].idempotency_key)
                )

        found = await asyncio.gather(*(find(i) for i in keyed))
        return {i: task for i, task in zip(keyed, found, strict=True) if task is not None}

    async def submit_children(self, children: Sequence[BackgroundTask]) -> list[BackgroundTask]:
        """Store and publish sub-tasks whose ids are stable per parent and key.

        A retried parent submits the same children again: those that exist already are
        kept as they are (only recounted by their parent), the others are created.
        Returns the children created now. A task type with a ``submit_role`` is never a child:
        whoever submitted the parent, its role is not known here (InvalidInputError).
        """
        for child in children:
            if child.task_type in self._registry and self._registry.get(child.task_type).submit_role:
                raise InvalidInputError(
                    ("task_type",),
                    f"a task of type {child.task_type!r} cannot be a sub-task: only a caller with the "
                    "role it needs submits it, through the API",
                )
        try:
            await self._store.create_many(children)
            created = list(children)
        except DuplicateTaskError:
            created = []
            existing: list[BackgroundTask] = []
            for child in children:
                try:
                    await self._store.create(child)
                    created.append(child)
                except DuplicateTaskError:
                    found = await self._store.get(child.id)
                    if found is None:
                        raise
                    if (found.parent_task_id, found.task_type, found.parameters) != (
                        child.parent_task_id,
                        child.task_type,
                        child.parameters,
                    ):
                        raise InvalidInputError(
                            ("key",),
                            f"sub-task {child.id} exists with another type or parameters: "
                            "a key names one child of its parent",
                        ) from None
                    existing.append(found)
            if existing and self._aggregator is not None:
                await self._aggregator.rollup_existing(existing)
        if created:
            await self._announce(created, origin=Origin.WORKER)
            await self._publish(created)
        return created

    async def _announce(self, tasks: Sequence[BackgroundTask], *, origin: Origin = Origin.API) -> None:
        """``TaskSubmitted`` for each task, concurrently (a parent's roll-ups batch together)."""
        events = [
            TaskSubmitted(
                task_id=t.id,
                task_type=t.task_type,
                occurred_at=t.created_at,
                origin=origin,
                node_id=self._node_id,
                parent_task_id=t.parent_task_id,
            )
            for t in tasks
        ]
        if len(events) == 1:
            await self._bus.publish(events[0], tasks[0])
        else:
            await asyncio.gather(*(self._bus.publish(e, t) for e, t in zip(events, tasks, strict=True)))

    async def publish_stored(
        self, tasks: Sequence[BackgroundTask], *, owner: str | None = None
    ) -> list[Submitted]:
        """Publish tasks already stored with their outbox pending (a replay, say); what fails
        to publish stays pending for the relay. ``owner``: the outbox entries are held by it
        (a priority change), and it marks them published itself, at once."""
        return await self._publish(tasks, owner=owner)

    async def _publish(self, tasks: Sequence[BackgroundTask], *, owner: str | None = None) -> list[Submitted]:
        if not self._publisher.ready:
            log.warning("broker not reachable: %d task(s) left in the outbox for the relay", len(tasks))
            self._publisher.count_failure("not_connected", len(tasks))
            return [Submitted(t, published=False) for t in tasks]
        results = await self._publisher.publish_many([TaskMessage.for_task(t) for t in tasks])
        published = [t.id for t, err in zip(tasks, results, strict=True) if err is None]
        if published and owner is not None:
            with contextlib.suppress(Exception):  # the relay publishes again after the hold
                await self._store.mark_published(published, owner=owner)
        elif published:
            self._marker.add(published)
        for task, err in zip(tasks, results, strict=True):
            if err is not None:
                log.warning("publish of task %s failed (%s); left in the outbox for the relay", task.id, err)
                with contextlib.suppress(Exception):
                    await self._store.record_publish_failure(task.id, f"{type(err).__name__}: {err}")
        return [Submitted(t, published=err is None) for t, err in zip(tasks, results, strict=True)]


__all__ = [
    "MAX_BULK_TASKS",
    "MAX_TAGS",
    "BrokerError",
    "Metadata",
    "Tags",
    "ensure_shallow",
    "ensure_storable",
    "BulkItem",
    "BulkProblem",
    "BulkSubmissionRefused",
    "IdempotencyKeyReusedError",
    "PublishedMarker",
    "SubmitRequest",
    "Submitted",
    "TaskSubmitter",
    "fingerprint",
]
