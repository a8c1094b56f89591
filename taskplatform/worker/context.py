"""The TaskContext an executable receives while one of its attempts runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from taskplatform.errors import Cancelled
from taskplatform.events.bus import EventBus
from taskplatform.events.models import TaskProgress
from taskplatform.logsetup import top_level_fields
from taskplatform.models import BackgroundTask, utcnow
from taskplatform.submission import SubmitRequest, TaskSubmitter
from taskplatform.tasks.executable import Progress

P = TypeVar("P", bound=BaseModel)

log = logging.getLogger("taskplatform.task")

#: Namespace of child task ids: uuid5(parent id + "/" + key) is the same on every attempt.
CHILD_ID_NAMESPACE = uuid.UUID("6f1c2b7e-3f5d-4c43-9a55-2f0d8d1c5e10")


def child_task_id(parent_id: str, key: str) -> str:
    """The id of the child named ``key`` of ``parent_id`` (stable across attempts)."""
    return str(uuid.uuid5(CHILD_ID_NAMESPACE, f"{parent_id}/{key}"))


class ExecutionContext(Generic[P]):
    """Implements ``taskplatform.tasks.executable.TaskContext`` for one attempt."""

    def __init__(
        self,
        task: BackgroundTask,
        parameters: P,
        *,
        bus: EventBus,
        submitter: TaskSubmitter | None,
        node_id: str,
        progress_model: type[Progress] = Progress,
        progress_interval: float = 1.0,
        received_at: datetime | None = None,
    ) -> None:
        self._task = task
        self._received_at = received_at or utcnow()
        self._parameters = parameters
        self._bus = bus
        self._submitter = submitter
        self._node_id = node_id
        self._progress_model = progress_model
        self._progress_interval = progress_interval
        self._cancel = asyncio.Event()
        # The first write waits one interval too: most short attempts never need one, their
        # last progress goes with their completion.
        self._last_progress = asyncio.get_running_loop().time()
        self._pending_progress: dict[str, Any] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._progress_lock = asyncio.Lock()
        self._flusher_writing = False
        self._child_seq = 0
        self.children = 0
        self.progress_writes = 0
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
    def received_at(self) -> datetime:
        return self._received_at

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        """Ask the executable to stop (it sees ``cancelled`` become True)."""
        self._cancel.set()

    # ------------------------------------------------------------ progress
    async def update_progress(self, progress: Progress | Mapping[str, Any]) -> None:
        model = (
            progress
            if isinstance(progress, self._progress_model)
            else self._progress_model.model_validate(
                progress.model_dump() if isinstance(progress, BaseModel) else progress
            )
        )
        self._pending_progress = model.model_dump(mode="json", exclude_none=True)
        if self._flusher is not None:
            return  # throttled: the scheduled write takes the latest value
        wait = self._last_progress + self._progress_interval - asyncio.get_running_loop().time()
        if wait <= 0:
            await self._write_pending()
        else:
            self._flusher = asyncio.create_task(self._flush_later(wait), name="progress-flush")

    async def _flush_later(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            self._flusher_writing = True
            await self._write_pending()
        finally:
            self._flusher_writing = False
            self._flusher = None

    async def _stop_flusher(self) -> None:
        """Cancel a scheduled flush that is still waiting; let one that is writing finish (a
        store call cancelled midway could strand its connection)."""
        flusher = self._flusher
        if flusher is None or flusher.done():
            return
        if not self._flusher_writing:
            flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher

    async def take_pending_progress(self) -> dict[str, Any] | None:
        """Stop throttled writes and hand over the latest progress not written yet (for the
        completion to carry), or None."""
        await self._stop_flusher()
        async with self._progress_lock:  # a write in flight finishes first
            data, self._pending_progress = self._pending_progress, None
        return data

    async def flush_progress(self) -> None:
        """Write throttled progress still pending (before the attempt settles)."""
        await self._stop_flusher()
        await self._write_pending()

    async def _write_pending(self) -> None:
        """Write the latest value; writes are serialised, so the last one stored is the latest."""
        async with self._progress_lock:
            data, self._pending_progress = self._pending_progress, None
            if data is None:
                return
            try:
                await self._write_progress(data)
            except asyncio.CancelledError:
                if self._pending_progress is None:  # not superseded: keep it for flush_progress
                    self._pending_progress = data
                raise

    async def _write_progress(self, data: dict[str, Any]) -> None:
        self._last_progress = asyncio.get_running_loop().time()
        event = TaskProgress(
            task_id=self._task.id,
            task_type=self._task.task_type,
            attempt=self._task.retry_count,
            node_id=self._node_id,
            progress=data,
        )
        try:
            delivery = await self._bus.publish(event, self._task)
        except Exception as exc:  # progress is best effort; the outcome is what must land
            log.warning("progress of task %s not recorded: %s", self._task.id, exc, extra=self._log_extra)
            return
        self.progress_writes += 1
        if not delivery.accepted:
            log.info("progress of task %s ignored: %s", self._task.id, delivery.rejected)

    # ------------------------------------------------------------ sub-tasks
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
        if self._submitter is None:
            raise RuntimeError("this context cannot submit sub-tasks (no submitter)")
        if self.cancelled:
            raise Cancelled("cancellation requested; no more sub-tasks")
        if keys is None:  # "#n": apart from explicit keys, which name children themselves
            keys = [f"#{self._child_seq + i}" for i in range(len(parameters))]
        elif len(keys) != len(parameters):
            raise ValueError(f"{len(keys)} keys given for {len(parameters)} sub-tasks")
        self._child_seq += len(parameters)
        parent = self._task
        requests = [
            SubmitRequest(
                task_type=task_type,
                parameters=p.model_dump(mode="json") if isinstance(p, BaseModel) else dict(p),
                user_id=parent.user_id,
                priority=parent.priority,
                tags=parent.tags,
            )
            for p in parameters
        ]
        ids = [child_task_id(parent.id, key) for key in keys]
        children = [
            self._submitter.prepare(r, task_id=i, parent_task_id=parent.id)
            for r, i in zip(requests, ids, strict=True)
        ]
        await self._submitter.submit_children(children)
        self.children += len(children)
        return ids

    # ------------------------------------------------------------ logging
    def log_info(self, message: str, **fields: Any) -> None:
        log.info(message, extra={**top_level_fields(fields), **self._log_extra})

    def log_error(self, message: str, **fields: Any) -> None:
        log.error(message, extra={**top_level_fields(fields), **self._log_extra})
