"""A small async client for the HTTP API, typed by executable class when you want it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from executors.base import BackgroundTaskExecutable
from taskplatform.errors import TaskPlatformError
from taskplatform.models import TERMINAL, BackgroundTask, TaskStatus

R = TypeVar("R", bound=BaseModel)


class ApiError(TaskPlatformError):
    """The API answered with an error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        self.status = status
        self.code = code
        self.details = details
        super().__init__(f"HTTP {status} {code}: {message}")


class TaskFailedError(TaskPlatformError):
    """A waited-for task ended in a status other than COMPLETED."""

    def __init__(self, task: BackgroundTask) -> None:
        self.task = task
        error = task.error_info.message if task.error_info else "no error recorded"
        super().__init__(f"task {task.id} ended {task.status}: {error}")


class TaskPlatformClient:
    """``async with TaskPlatformClient("http://127.0.0.1:8000") as client: ...``"""

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, headers: dict[str, str] | None = None
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)

    async def __aenter__(self) -> TaskPlatformClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, url, **kwargs)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ApiError(response.status_code, err["code"], err["message"], err.get("details"))
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "error", response.text[:500]) from None
        return response.json()

    async def submit(
        self,
        task_type: str | type[BackgroundTaskExecutable[Any, Any]],
        parameters: BaseModel | dict[str, Any],
        *,
        user_id: str | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
    ) -> str:
        """Submit a task; returns its id. ``task_type`` may be the executable class."""
        type_name = task_type if isinstance(task_type, str) else task_type.task_type
        params = parameters.model_dump(mode="json") if isinstance(parameters, BaseModel) else parameters
        body: dict[str, Any] = {
            "task_type": type_name,
            "parameters": params,
            "priority": priority,
            "tags": tags or [],
        }
        if user_id is not None:
            body["user_id"] = user_id
        data = await self._request("POST", "/api/v1/tasks", json=body)
        return str(data["task_id"])

    async def get(self, task_id: str) -> BackgroundTask:
        return BackgroundTask.model_validate(await self._request("GET", f"/api/v1/tasks/{task_id}"))

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Request cancellation; returns ``{task_id, status, cancel_requested}``. ApiError 409
        when the task already finished."""
        data: dict[str, Any] = await self._request("POST", f"/api/v1/tasks/{task_id}/cancel")
        return data

    async def wait(self, task_id: str, *, timeout: float = 60.0, poll: float = 0.1) -> BackgroundTask:
        """Poll until the task is terminal; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if task.status in TERMINAL:
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {task.status} after {timeout}s")
            await asyncio.sleep(poll)

    async def result(
        self, executable: type[BackgroundTaskExecutable[Any, R]], task_id: str, *, timeout: float = 60.0
    ) -> R:
        """Wait for the task and return its result as the executable's Result model."""
        task = await self.wait(task_id, timeout=timeout)
        if task.status is not TaskStatus.COMPLETED:
            raise TaskFailedError(task)
        return executable.Result.model_validate(task.result)  # type: ignore[return-value]
