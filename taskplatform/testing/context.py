"""``FakeTaskContext``: the ``TaskContext`` an executable sees, in memory, for unit tests.

It behaves like the worker's context (``taskplatform/worker/context.py``) where a task can
tell: progress is validated against the progress model, sub-task keys default to ``#n`` and
ids are the same on every attempt, submitting once cancelled raises ``Cancelled``. It records
instead of publishing: every progress report (unthrottled), every sub-task, every log line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from taskplatform.errors import Cancelled
from taskplatform.tasks.executable import Progress
from taskplatform.worker.context import child_task_id

P = TypeVar("P")


@dataclass(frozen=True)
class SubTask:
    """One child a task submitted: parameters as the task passed them."""

    task_type: str
    parameters: BaseModel | Mapping[str, Any]
    key: str
    task_id: str


@dataclass(frozen=True)
class LogEntry:
    """One ``log_info``/``log_error`` call."""

    level: str  # "info" or "error"
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


class FakeTaskContext(Generic[P]):
    """Implements ``TaskContext`` in memory and records what the task does with it.

    ``cancelled`` is a plain attribute a test may set; ``cancel_after_progress`` and
    ``cancel_after_submits`` set it once that many progress reports or ``submit_sub_tasks``
    calls have happened (to test that a task stops between steps).
    """

    def __init__(
        self,
        parameters: P,
        *,
        task_id: str = "task-1",
        task_type: str = "test_task",
        attempt: int = 0,
        user_id: str | None = None,
        received_at: datetime | None = None,
        cancelled: bool = False,
        cancel_after_progress: int | None = None,
        cancel_after_submits: int | None = None,
        progress_model: type[Progress] = Progress,
    ) -> None:
        self.parameters = parameters
        self.task_id = task_id
        self.task_type = task_type
        self.attempt = attempt
        self.user_id = user_id
        self.received_at = received_at or datetime.now(UTC)
        self.cancelled = cancelled
        self.cancel_after_progress = cancel_after_progress
        self.cancel_after_submits = cancel_after_submits
        self.progress_model = progress_model
        #: Every progress report, validated against ``progress_model`` as the worker does.
        self.progress: list[Progress] = []
        #: Every ``submit_sub_tasks`` call (``submit_sub_task`` is a call of one).
        self.submit_calls: list[list[SubTask]] = []
        self.logs: list[LogEntry] = []
        self._child_seq = 0

    # ------------------------------------------------------------ TaskContext
    async def update_progress(self, progress: Progress | Mapping[str, Any]) -> None:
        model = (
            progress
            if isinstance(progress, self.progress_model)
            else self.progress_model.model_validate(
                progress.model_dump() if isinstance(progress, BaseModel) else progress
            )
        )
        self.progress.append(model)
        if self.cancel_after_progress is not None and len(self.progress) >= self.cancel_after_progress:
            self.cancelled = True

    async def submit_sub_task(
        self, task_type: str, parameters: BaseModel | Mapping[str, Any], *, key: str | None = None
    ) -> str:
        ids = await self.submit_sub_tasks(task_type, [parameters], keys=None if key is None else [key])
        return ids[0]

    async def submit_sub_tasks(
        self,
        task_type: str,
        parameters: Sequence[BaseModel | Mapping[str, Any]],
        *,
        keys: Sequence[str] | None = None,
    ) -> list[str]:
        if self.cancelled:
            raise Cancelled("cancellation requested; no more sub-tasks")
        if keys is None:
            keys = [f"#{self._child_seq + i}" for i in range(len(parameters))]
        elif len(keys) != len(parameters):
            raise ValueError(f"{len(keys)} keys given for {len(parameters)} sub-tasks")
        self._child_seq += len(parameters)
        call = [
            SubTask(task_type, p, key, self.sub_task_id(key)) for p, key in zip(parameters, keys, strict=True)
        ]
        self.submit_calls.append(call)
        if self.cancel_after_submits is not None and len(self.submit_calls) >= self.cancel_after_submits:
            self.cancelled = True
        return [child.task_id for child in call]

    def log_info(self, message: str, **fields: Any) -> None:
        self.logs.append(LogEntry("info", message, fields))

    def log_error(self, message: str, **fields: Any) -> None:
        self.logs.append(LogEntry("error", message, fields))

    # ------------------------------------------------------------ for assertions
    @property
    def sub_tasks(self) -> list[SubTask]:
        """Every submitted child, in submission order."""
        return [child for call in self.submit_calls for child in call]

    def sub_task_id(self, key: str) -> str:
        """The id the child named ``key`` of this task gets (the same on every attempt)."""
        return child_task_id(self.task_id, key)

    @property
    def messages(self) -> list[str]:
        """The logged messages, in order."""
        return [entry.message for entry in self.logs]
