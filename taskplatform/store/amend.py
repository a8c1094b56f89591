"""Changing a task that waits to run: its priority, tags and metadata (``PATCH``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus
from taskplatform.store.primitives import StorePrimitives
from taskplatform.store.types import Guard

_QUEUED = Guard(statuses=frozenset({TaskStatus.QUEUED}))


class AmendOperations(StorePrimitives):
    """``amend_queued``, shared by every backend."""

    async def amend_queued(
        self,
        task_id: str,
        *,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        publish_hold_until: datetime | None = None,
        owner: str | None = None,
    ) -> BackgroundTask | None:
        """Set what is given, only while the task is QUEUED; None when it is not (or missing).

        A new priority needs a new message (the queued one names the old priority, and its
        claim loses): the outbox goes back to pending, held by ``owner`` until
        ``publish_hold_until`` for the caller to publish it; the relay does after that.
        """
        changes: dict[str, Any] = {}
        if tags is not None:
            changes["tags"] = list(tags)
        if metadata is not None:
            changes["metadata"] = dict(metadata)
        if priority is not None:
            changes.update(
                {
                    "priority": priority,
                    "outbox.status": OutboxStatus.PENDING.value,
                    "outbox.lease_until": publish_hold_until,
                    "outbox.lease_owner": owner,
                }
            )
        if not changes:
            raise ValueError("amend_queued needs at least one of priority, tags, metadata")
        return await self._guarded_update(task_id, _QUEUED, changes)
