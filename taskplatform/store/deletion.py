"""Deleting finished tasks: one on request (with its sub-tasks), or all past their retention."""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from taskplatform.models import TERMINAL, BackgroundTask, TaskStatus
from taskplatform.store.primitives import StorePrimitives
from taskplatform.store.types import MAX_PAGE_SIZE

#: What retention deletes once its time is up: tasks that ended as they were meant to. Dead and
#: failed tasks wait for an operator (replay, or DELETE) however old they are.
EXPIRING: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS, TaskStatus.CANCELLED}
)


class Deletion(str, Enum):
    """What became of a request to delete a task."""

    DELETED = "deleted"
    NOT_FOUND = "not_found"
    #: The task (or, with ``blocking``, one of its sub-tasks) has not finished.
    ACTIVE = "active"
    #: A sub-task of a parent that still exists: it goes with its parent.
    SUB_TASK = "sub_task"


@dataclass(frozen=True)
class DeleteOutcome:
    """The outcome, the ids deleted (the task first, then its sub-tasks level by level), and
    the task in the way when refused."""

    result: Deletion
    deleted: tuple[str, ...] = ()
    blocking: BackgroundTask | None = field(default=None, compare=False)


class DeletionOperations(StorePrimitives):
    """Deleting finished tasks, shared by every backend over two primitives."""

    @abstractmethod
    async def _delete_finished(self, task_ids: Sequence[str]) -> builtins.list[str]:
        """Delete those of ``task_ids`` that are in a terminal status, with the roll-up ledger
        they keep as parents; returns the ids deleted. Dead-letter records stay (an operator's
        record of what died; a replay then answers that the task no longer exists)."""

    @abstractmethod
    async def _finished_before(self, before: datetime, limit: int) -> builtins.list[str]:
        """Ids of up to ``limit`` tasks in an ``EXPIRING`` status that finished (``completed_at``)
        before ``before``, longest finished first."""

    async def delete_task(self, task_id: str) -> DeleteOutcome:
        """Delete a finished task and every sub-task under it.

        Refused while the task or one of its sub-tasks has not finished (ACTIVE), and for a
        sub-task whose parent exists (SUB_TASK: the parent's summary counts it; delete the
        parent). Sub-tasks are found level by level, so trees of any depth go together.
        """
        task = await self.get(task_id)
        if task is None:
            return DeleteOutcome(Deletion.NOT_FOUND)
        if task.status not in TERMINAL:
            return DeleteOutcome(Deletion.ACTIVE, blocking=task)
        if task.parent_task_id is not None and await self.get(task.parent_task_id) is not None:
            return DeleteOutcome(Deletion.SUB_TASK, blocking=task)
        tree = [task_id]
        level = [task_id]
        while level:
            below: builtins.list[str] = []
            for parent_id in level:
                async for children in self.child_pages(parent_id):
                    for child in children:
                        if child.status not in TERMINAL:
                            return DeleteOutcome(Deletion.ACTIVE, blocking=child)
                        below.append(child.id)
            tree.extend(below)
            level = below
        # Parents first would leave orphans if the call died midway; deepest first cannot.
        gone: set[str] = set()
        for start in range(len(tree), 0, -MAX_PAGE_SIZE):
            gone.update(await self._delete_finished(tree[max(0, start - MAX_PAGE_SIZE) : start]))
        deleted = tuple(t for t in tree if t in gone)
        if task_id not in gone:  # replayed back to QUEUED between the check and the delete
            current = await self.get(task_id)
            return DeleteOutcome(Deletion.ACTIVE if current else Deletion.NOT_FOUND, deleted, current)
        return DeleteOutcome(Deletion.DELETED, deleted)

    async def purge_finished(self, *, before: datetime, limit: int = 1000) -> int:
        """Retention: delete up to ``limit`` tasks that ended (``EXPIRING``: completed, with or
        without errors, or cancelled) before ``before``; returns how many. Dead and failed tasks
        stay for an operator. Each task goes on its own time, sub-tasks too: a parent's summary
        keeps counting a purged child (its ledger entry stays until the parent goes)."""
        ids = await self._finished_before(before, limit)
        return len(await self._delete_finished(ids)) if ids else 0
