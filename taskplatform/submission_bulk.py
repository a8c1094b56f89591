"""What a bulk submission is made of (``POST /api/v1/tasks/bulk``): its items, the problems
found in them, and the refusal that names them; ``TaskSubmitter.prepare_bulk`` and
``submit_bulk_prepared`` (``submission.py``) use them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskplatform.errors import InvalidInputError, TaskPlatformError, UnknownTaskTypeError

if TYPE_CHECKING:
    from taskplatform.submission import SubmitRequest

#: The most tasks one bulk submission may hold (``POST /api/v1/tasks/bulk``).
MAX_BULK_TASKS = 1000


@dataclass(frozen=True)
class BulkItem:
    """One task of a bulk submission: the request (its owner filled in) and its idempotency key."""

    request: SubmitRequest
    idempotency_key: str | None = None


@dataclass(frozen=True)
class BulkProblem:
    """Why one item of a bulk submission is refused. ``code`` is the single submission's error
    code (``unknown_task_type``, ``invalid_parameters``, ``validation_error``,
    ``idempotency_key_reused``) or ``duplicate_idempotency_key`` (two items of the request share
    a key); ``details``: JSON-safe fields (``loc`` within the item, ``type``, ``idempotency_key``,
    ``task_id``, ``indexes``)."""

    index: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class BulkSubmissionRefused(TaskPlatformError):
    """Items of a bulk submission were refused; nothing of it was stored (the API answers 422)."""

    def __init__(self, problems: Sequence[BulkProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.index)
        items = sorted({p.index for p in self.problems})
        shown = "; ".join(f"item {p.index}: {p.message}" for p in self.problems[:5])
        more = f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        super().__init__(
            f"{len(items)} of the submitted tasks are invalid, nothing was stored: {shown}{more}"
        )


def item_problems(
    index: int, exc: UnknownTaskTypeError | InvalidInputError | ValidationError
) -> list[BulkProblem]:
    """The problems ``TaskSubmitter.prepare`` (or a key check) raised for item ``index``."""
    if isinstance(exc, UnknownTaskTypeError):
        return [BulkProblem(index, "unknown_task_type", str(exc), {"loc": ["task_type"]})]
    if isinstance(exc, InvalidInputError):
        code = "invalid_parameters" if exc.location[:1] == ("parameters",) else "validation_error"
        return [BulkProblem(index, code, str(exc), {"loc": list(exc.location), "type": "unstorable_value"})]
    return [
        BulkProblem(
            index,
            "invalid_parameters",
            f"parameters.{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"],
            {"loc": ["parameters", *err["loc"]], "type": err["type"]},
        )
        for err in exc.errors()
    ]


def schema_problems(index: int, exc: ValidationError) -> list[BulkProblem]:
    """Item ``index`` failed the single submission's schema: one problem per field at fault."""
    problems = []
    for err in exc.errors():
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        message = f"{'.'.join(map(str, loc)) or 'item'}: {err['msg']}"
        problems.append(BulkProblem(index, "validation_error", message, {"loc": loc, "type": err["type"]}))
    return problems
