"""HTTP routes that change a task (``PATCH``, while it waits) or delete it (once finished)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskplatform.api.auth import SubmitterDep, require_submitter
from taskplatform.api.deps import RuntimeDep
from taskplatform.api.errors import ErrorBody
from taskplatform.api.routes import ERRORS, TaskId, shown, visible_task
from taskplatform.management import NotQueued, TaskManager
from taskplatform.models import MAX_PRIORITY, BackgroundTask
from taskplatform.store.base import Deletion
from taskplatform.submission import Metadata, Tags

router = APIRouter(
    prefix="/api/v1", tags=["tasks"], responses=ERRORS, dependencies=[Depends(require_submitter)]
)


class TaskUpdate(BaseModel):
    """What to change; each given field replaces the task's (tags and metadata whole)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    tags: Tags | None = None
    metadata: Metadata | None = None

    @model_validator(mode="after")
    def _something(self) -> TaskUpdate:
        if self.priority is None and self.tags is None and self.metadata is None:
            raise ValueError("give at least one of priority, tags, metadata")
        return self


class TaskDeleted(BaseModel):
    """The task deleted, and every sub-task deleted with it."""

    task_id: str
    deleted: list[str]


_CONFLICT = {409: {"model": ErrorBody, "description": "Not in a state that allows it; the body says why"}}


@router.patch(
    "/tasks/{task_id}",
    response_model=BackgroundTask,
    summary="Change a waiting task's priority, tags or metadata",
    responses=_CONFLICT,  # type: ignore[arg-type]
)
async def amend_task(
    task_id: TaskId, body: TaskUpdate, runtime: RuntimeDep, principal: SubmitterDep
) -> BackgroundTask:
    """Only while the task is QUEUED (409 otherwise). A new priority moves its message to that
    priority's queue; tags and metadata are replaced whole."""
    task = await visible_task(runtime, principal, task_id)
    manager = TaskManager(runtime.store, runtime.submitter, node_id=runtime.settings.node_id)
    try:
        amended = await manager.amend(task, priority=body.priority, tags=body.tags, metadata=body.metadata)
    except NotQueued as exc:
        raise HTTPException(409, str(exc)) from None
    return shown(principal, amended)


@router.delete(
    "/tasks/{task_id}",
    response_model=TaskDeleted,
    summary="Delete a finished task and its sub-tasks",
    responses=_CONFLICT,  # type: ignore[arg-type]
)
async def delete_task(task_id: TaskId, runtime: RuntimeDep, principal: SubmitterDep) -> TaskDeleted:
    """Finished tasks only (409 while it, or one of its sub-tasks, has not finished: cancel it
    first); a sub-task goes with its parent (409). Its dead-letter record, if any, stays."""
    await visible_task(runtime, principal, task_id)
    outcome = await runtime.store.delete_task(task_id)
    if outcome.result is Deletion.NOT_FOUND:
        raise HTTPException(404, f"task {task_id!r} not found")
    blocking = outcome.blocking
    if outcome.result is Deletion.SUB_TASK and blocking is not None:
        raise HTTPException(
            409,
            f"task {task_id!r} is a sub-task of {blocking.parent_task_id!r}: it is deleted with its parent",
        )
    if outcome.result is Deletion.ACTIVE:
        what = "it" if blocking is None or blocking.id == task_id else f"its sub-task {blocking.id!r}"
        status = blocking.status.value if blocking is not None else "active"
        raise HTTPException(
            409, f"task {task_id!r} cannot be deleted: {what} is {status}; cancel it or wait for it to finish"
        )
    return TaskDeleted(task_id=task_id, deleted=list(outcome.deleted))
