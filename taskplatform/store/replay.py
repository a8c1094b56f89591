"""Replaying a task from the dead letters: one guarded update, shared by every backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus
from taskplatform.store.primitives import StorePrimitives, with_event
from taskplatform.store.types import Guard

#: What an operator may replay: a task that will not run again on its own.
REPLAYABLE = frozenset({TaskStatus.DEAD_LETTER, TaskStatus.FAILED})


class ReplayOperations(StorePrimitives):
    """The replay of a dead (or failed) task."""

    async def replay_task(
        self,
        task_id: str,
        *,
        expected_replays: int,
        parameters: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """DEAD_LETTER/FAILED -> QUEUED as a new generation (``replays`` + 1), only while the
        task is at ``expected_replays``: of two operators replaying one death, one wins.

        The task starts over (attempt 0, no result, lease or owner, outbox pending for the
        caller or the relay to publish); ``parameters`` replace the stored ones when given.
        ``error_info`` is kept: the last error stays visible until the next attempt's.
        Returns the document after, or None when the guard did not hold.
        """
        changes: dict[str, Any] = {
            "status": TaskStatus.QUEUED,
            "retry_count": 0,
            "replays": expected_replays + 1,
            "result": None,
            "completed_at": None,
            "started_at": None,
            "last_attempt_at": None,
            "next_attempt_at": None,
            "lease_until": None,
            "execution_node_id": None,
            "cancel_requested": False,
            "awaiting_children": False,
            "outbox.status": OutboxStatus.PENDING.value,
            "outbox.attempts": 0,
            "outbox.lease_until": None,
            "outbox.lease_owner": None,
            "outbox.published_at": None,
            "outbox.last_error": None,
        }
        if parameters is not None:
            changes["parameters"] = dict(parameters)
        guard = Guard(statuses=REPLAYABLE, equals={"replays": expected_replays})
        return await self._guarded_update(task_id, guard, with_event(changes, event_id))
