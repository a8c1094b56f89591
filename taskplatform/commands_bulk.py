"""Bulk submission's rules, for every front door (``POST /api/v1/tasks/bulk``, gRPC
``CreateTasks``): ``TaskCommands.submit_bulk`` calls ``submit_bulk`` here.

Every item is checked before anything is stored, in this order: items naming another user
without an admin's token (BulkForbidden), items of a type kept for a higher role (BulkForbidden,
audited), then each item's task type, parameters and idempotency key together with the problems
the front door found parsing them (BulkSubmissionRefused, naming every item at fault). The tasks
are then stored in one write and published in one pipelined batch; the created ones are audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskplatform.auth.principal import Principal
from taskplatform.commands import CommandForbidden, submit_refusal
from taskplatform.submission import BulkItem, BulkProblem, BulkSubmissionRefused, SubmitRequest, Submitted

if TYPE_CHECKING:
    from taskplatform.audit import AuditTrail
    from taskplatform.submission import TaskSubmitter
    from taskplatform.tasks.registry import ExecutableRegistry


@dataclass(frozen=True)
class BulkEntry:
    """One item as a front door parsed it: its position in the request, the request (``user_id``
    as the caller gave it, None for the caller) and its idempotency key."""

    index: int
    request: SubmitRequest
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ForbiddenItem:
    index: int
    field: str
    """``user_id`` or ``task_type``."""
    why: str


class BulkForbidden(CommandForbidden):
    """Items the caller may not submit; nothing was stored (HTTP 403, gRPC PERMISSION_DENIED)."""

    def __init__(self, message: str, items: Sequence[ForbiddenItem]) -> None:
        self.items = list(items)
        super().__init__(message)


def _shown(indexes: Sequence[int]) -> str:
    return ", ".join(map(str, indexes[:10])) + (", …" if len(indexes) > 10 else "")


async def submit_bulk(
    entries: Sequence[BulkEntry],
    principal: Principal,
    *,
    submitter: TaskSubmitter,
    registry: ExecutableRegistry,
    audit: AuditTrail,
    problems: Sequence[BulkProblem] = (),
) -> list[Submitted]:
    """Store and publish ``entries`` for ``principal``, all or nothing; one result per entry, in
    order. ``problems``: what the front door found wrong with items it could not parse."""
    who = principal.subject or "anonymous"
    foreign = [
        e.index
        for e in entries
        if e.request.user_id is not None and e.request.user_id != principal.subject and not principal.is_admin
    ]
    if foreign:
        raise BulkForbidden(
            f"only an admin may submit for another user: items {_shown(foreign)} name a user_id that "
            "is not the token's subject; leave user_id out",
            [ForbiddenItem(i, "user_id", "only an admin may submit for another user") for i in foreign],
        )
    beyond_role = [
        ForbiddenItem(e.index, "task_type", why)
        for e in entries
        if (why := submit_refusal(principal, registry, e.request.task_type)) is not None
    ]
    if beyond_role:
        shown = _shown([f.index for f in beyond_role])
        first = beyond_role[0].why
        await audit.record(
            who, "submit", [], outcome=f"refused: items {shown}: {first}", details={"bulk": True}
        )
        raise BulkForbidden(
            f"items {shown} are of a task type this token may not submit: {first}", beyond_role
        )
    items = [
        BulkItem(
            e.request.model_copy(
                update={"user_id": principal.subject if e.request.user_id is None else e.request.user_id}
            ),
            e.idempotency_key,
        )
        for e in entries
    ]
    tasks, more = submitter.prepare_bulk(items, indexes=[e.index for e in entries])
    if problems or more:
        raise BulkSubmissionRefused([*problems, *more])
    submitted = await submitter.submit_bulk_prepared(tasks)  # BulkSubmissionRefused: keys reused
    created = [s.task.id for s in submitted if s.created]
    if created:
        types = sorted({s.task.task_type for s in submitted if s.created})
        await audit.record(who, "submit", created, details={"bulk": True, "task_types": types[:20]})
    return submitted
