"""Parents and children: a parent waits for its children, which roll up into its summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.store.primitives import StorePrimitives, owner_guard, with_event
from taskplatform.store.types import Guard, ParentState

#: What a parent waiting for its children may finish as.
PARENT_OUTCOMES = frozenset({TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS})


class SubTaskOperations(StorePrimitives):
    """The parent/child operations, shared by every backend."""

    async def set_awaiting_children(
        self,
        task_id: str,
        *,
        node_id: str,
        attempt: int,
        result: Mapping[str, Any] | None,
        event_id: str | None = None,
    ) -> BackgroundTask | None:
        """The owner of ``attempt`` ends its own execution and leaves the task waiting for its
        children: it stays RUNNING with ``awaiting_children``, keeps ``result``, and loses its
        lease, so neither the reaper nor a takeover touches it. None if it is not ours."""
        changes = {"awaiting_children": True, "result": dict(result) if result is not None else None}
        changes["lease_until"] = None
        return await self._guarded_update(
            task_id, owner_guard(node_id, attempt), with_event(changes, event_id)
        )

    async def finish_parent(
        self, task_id: str, *, expected_version: int, status: TaskStatus, event_id: str | None = None
    ) -> BackgroundTask | None:
        """A parent waiting for its children -> ``status`` (COMPLETED or COMPLETED_WITH_ERRORS),
        only at ``expected_version``: the version of the roll-up that found every child
        finished. A later roll-up bumps the version, so a decision on stale counts loses."""
        if status not in PARENT_OUTCOMES:
            raise ValueError(f"finish_parent moves to COMPLETED or COMPLETED_WITH_ERRORS, not {status}")
        guard = Guard(
            statuses=frozenset({TaskStatus.RUNNING}),
            equals={"awaiting_children": True, "version": expected_version},
        )
        changes = {
            "status": status,
            "completed_at": utcnow(),
            "awaiting_children": False,
            "lease_until": None,
        }
        return await self._guarded_update(task_id, guard, with_event(changes, event_id))

    async def apply_rollups(
        self, parent_id: str, items: Sequence[tuple[str, TaskStatus, int]]
    ) -> ParentState | None:
        """``apply_rollup`` for several children of one parent, in order; returns the parent
        after the last, or None if there is no such parent. Backends may do it in one go."""
        if not items:
            task = await self.get(parent_id)
            return ParentState.of(task) if task is not None else None
        parent: ParentState | None = None
        for child_id, status, version in items:
            parent = await self.apply_rollup(parent_id, child_id, status, version)
            if parent is None:
                return None
        return parent

    async def rollup_children(self, parent_id: str) -> ParentState | None:
        """Reconcile: roll up every child of ``parent_id`` at its current status and version.

        Idempotent (the ledger ignores what it already holds); heals a roll-up lost in a
        crash. Returns the parent after, or None if there is no such parent.
        """
        found = await self.get(parent_id)
        parent = ParentState.of(found) if found is not None else None
        if parent is None:
            return None
        async for children in self.child_pages(parent_id):
            parent = await self.apply_rollups(parent_id, [(c.id, c.status, c.version) for c in children])
            if parent is None:
                return None
        return parent
