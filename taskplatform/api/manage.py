"""HTTP routes that change a task (``PATCH``, while it waits) or delete it (once finished); the
work is ``taskplatform/commands.py: TaskCommands``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskplatform.api.auth import SubmitterDep, require_submitter
from taskplatform.api.deps import CommandsDep, command_answers
from taskplatform.api.errors import ErrorBody
from taskplatform.api.routes import ERRORS, TaskId
from taskplatform.commands import shown
from taskplatform.models import MAX_PRIORITY, BackgroundTask
from taskplatform.storable import Metadata, Tags

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
    task_id: TaskId, body: TaskUpdate, commands: CommandsDep, principal: SubmitterDep
) -> BackgroundTask:
    """Only while the task is QUEUED (409 otherwise). A new priority moves its message to that
    priority's queue; tags and metadata are replaced whole."""
    with command_answers():
        amended = await commands.amend(
            task_id, principal, priority=body.priority, tags=body.tags, metadata=body.metadata
        )
    return shown(principal, amended)


@router.delete(
    "/tasks/{task_id}",
    response_model=TaskDeleted,
    summary="Delete a finished task and its sub-tasks",
    responses=_CONFLICT,  # type: ignore[arg-type]
)
async def delete_task(task_id: TaskId, commands: CommandsDep, principal: SubmitterDep) -> TaskDeleted:
    """Finished tasks only (409 while it, or one of its sub-tasks, has not finished: cancel it
    first); a sub-task goes with its parent (409). Its dead-letter record, if any, stays."""
    with command_answers():
        deleted = await commands.delete(task_id, principal)
    return TaskDeleted(task_id=task_id, deleted=deleted)
