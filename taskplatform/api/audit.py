"""``GET /api/v1/audit``: the audit log of who did what (operators and admins only).

Task actions (``submit``, ``cancel``, ``patch``, ``delete``) and dead-letter actions
(``replay``, ``bulk_replay``, ``discard``), newest first, filtered by actor, action, task, dead
letter and time. ``GET /api/v1/dead-letters/audit`` is the same log (its dead-letter filter).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from taskplatform.api.auth import require_operator
from taskplatform.api.deadletters import ERRORS, AuditList, ShortText, TimeBound
from taskplatform.api.deps import NO_NUL, RuntimeDep
from taskplatform.models.dead_letter import AuditAction
from taskplatform.store.base import MAX_PAGE_SIZE
from taskplatform.store.deadletters import AuditFilter

router = APIRouter(
    prefix="/api/v1", tags=["audit"], responses=ERRORS, dependencies=[Depends(require_operator)]
)


@router.get("/audit", response_model=AuditList, summary="The audit log: who did what, newest first")
async def list_audit(
    runtime: RuntimeDep,
    actor: ShortText = None,
    action: Annotated[AuditAction | None, Query(description="one action")] = None,
    task_id: Annotated[
        str | None, Query(max_length=255, pattern=NO_NUL, description="entries that acted on this task")
    ] = None,
    dead_letter_id: ShortText = None,
    since: Annotated[TimeBound, Query(description="at or after (with a UTC offset)")] = None,
    until: Annotated[TimeBound, Query(description="before (with a UTC offset)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditList:
    """Each entry: who (``actor``: the token's subject), when, the action, the tasks and dead
    letters it named, and how it ended (``ok``, ``partial``, or ``refused: why``)."""
    filters = AuditFilter(
        actor=actor, action=action, task_id=task_id, dead_letter_id=dead_letter_id, since=since, until=until
    )
    page = await runtime.store.list_audit(filters, limit=limit, cursor=cursor)
    return AuditList(items=page.items, next_cursor=page.next_cursor)
