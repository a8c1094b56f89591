"""The TaskContext an executable receives while one of its attempts runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from executors.base import Progress
from taskplatform.models import BackgroundTask
from taskplatform.store.base import BaseTaskStore

P = TypeVar("P", bound=BaseModel)

log = logging.getLogger("taskplatform.task")


class ExecutionContext(Generic[P]):
    """Implements ``executors.base.TaskContext`` for one attempt."""

    def __init__(self, task: BackgroundTask, parameters: P, *, store: BaseTaskStore, node_id: str) -> None:
        self._task = task
        self._parameters = parameters
        self._store = store
        self._node_id = node_id
        self._cancel = asyncio.Event()
        self._log_extra = {
            "task_id": task.id,
            "task_type": task.task_type,
            "attempt": task.retry_count,
            "node_id": node_id,
        }

    @property
    def task_id(self) -> str:
        return self._task.id

    @property
    def task_type(self) -> str:
        return self._task.task_type

    @property
    def attempt(self) -> int:
        return self._task.retry_count

    @property
    def user_id(self) -> str | None:
        return self._task.user_id

    @property
    def parameters(self) -> P:
        return self._parameters

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        """Ask the executable to stop (it sees ``cancelled`` become True)."""
        self._cancel.set()

    async def update_progress(self, progress: Progress | Mapping[str, Any]) -> None:
        data = (
            progress.model_dump(mode="json", exclude_none=True)
            if isinstance(progress, BaseModel)
            else dict(Progress.model_validate(progress).model_dump(mode="json", exclude_none=True))
        )
        await self._store.record_progress(self._task.id, node_id=self._node_id, progress=data)

    def log_info(self, message: str, **fields: Any) -> None:
        log.info(message, extra={**self._log_extra, "fields": fields})

    def log_error(self, message: str, **fields: Any) -> None:
        log.error(message, extra={**self._log_extra, "fields": fields})
