"""Changing a waiting task on request (the API's ``PATCH``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.outbox import OWN_PUBLISH_HOLD_SECONDS
from taskplatform.store.base import BaseTaskStore
from taskplatform.submission import TaskSubmitter, ensure_storable


class NotQueued(Exception):
    """The task is not (or no longer) QUEUED: it cannot be changed."""

    def __init__(self, task: BackgroundTask | None) -> None:
        self.task = task
        status = task.status.value if task is not None else "gone"
        super().__init__(f"task {task.id if task else ''!r} is {status}; only a QUEUED task can be changed")


class TaskManager:
    """Changes what a waiting task carries (deleting is the store's ``delete_task``)."""

    def __init__(self, store: BaseTaskStore, submitter: TaskSubmitter, *, node_id: str) -> None:
        self._store = store
        self._submitter = submitter
        self._node_id = node_id

    async def amend(
        self,
        task: BackgroundTask,
        *,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BackgroundTask:
        """Set the given fields of ``task`` while it is QUEUED (NotQueued otherwise).

        A new priority takes a new message on its priority's queue: the stored change comes
        first, with the outbox pending and held for this call, then the publish; the message
        already queued names the old priority and loses its claim when it arrives. If the
        publish fails, the relay publishes once the hold ends.
        """
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
