"""A small async client for the HTTP API, typed by executable class when you want it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from taskplatform.errors import TaskPlatformError
from taskplatform.models import TERMINAL, AuditEntry, BackgroundTask, DeadLetter, DeadLetterStatus, TaskStatus
from taskplatform.tasks.executable import BackgroundTaskExecutable

if TYPE_CHECKING:
    from taskplatform.settings import PlatformSettings

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


class WaitTimedOut(TaskPlatformError, TimeoutError):
    """``wait`` gave up: the task was not finished after ``timeout`` seconds (it goes on).

    ``task`` is the task as last seen. A ``TimeoutError``, as ``wait`` raised before.
    """

    def __init__(self, task: BackgroundTask, timeout: float) -> None:
        self.task = task
        self.timeout = timeout
        super().__init__(f"task {task.id} still {task.status} after {timeout:g}s")


class DeadLetterListing(BaseModel):
    """A page of dead letters (most recently seen first) and counts over all that match.

    ``counts`` is the API's ``{"total": int, "by_task_type": {...}, "by_reason": {...}}``.
    """

    items: list[DeadLetter]
    next_cursor: str | None = None
    counts: dict[str, Any] = Field(default_factory=dict)


class AuditListing(BaseModel):
    """A page of the operator audit log, newest first; ``next_cursor`` is None on the last."""

    items: list[AuditEntry]
    next_cursor: str | None = None


DEAD_LETTERS = "/api/v1/dead-letters"
#: A filter value as the client takes it: text, a status, or a time (sent as ISO 8601).
FilterValue = str | DeadLetterStatus | datetime | None


def _wire(value: str | DeadLetterStatus | datetime) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values: a filter that is not given is not sent."""
    return {k: v for k, v in values.items() if v is not None}


class TaskPlatformClient:
    """``async with TaskPlatformClient("http://127.0.0.1:8000", token=jwt) as client: ...``

    ``token`` is sent as ``Authorization: Bearer <token>`` on every request. ``operator`` is
    sent as ``X-Operator`` on DeadLetter API calls, naming who acts in the audit log; the
    API reads it only while its authentication is disabled (otherwise the token's subject
    acts). ``transport`` replaces httpx's (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        operator: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        sent = dict(headers or {})
        if token:  # an empty TASKPLATFORM_TOKEN means none
            sent["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=sent, transport=transport
        )
        self._operator_headers: dict[str, str] = {}
        if operator is not None:
            self._operator_headers["X-Operator"] = operator

    @classmethod
    def from_settings(cls, settings: PlatformSettings, **kwargs: Any) -> TaskPlatformClient:
        """A client for ``API_URL`` sending ``TOKEN`` (when set); ``kwargs`` go to the constructor."""
        token = settings.token.get_secret_value() if settings.token is not None else None
        kwargs.setdefault("token", token)
        return cls(settings.client_api_url, **kwargs)

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
        try:
            return response.json()
        except ValueError:  # an answer, but not the API's: another server behind API_URL
            raise ApiError(
                response.status_code,
                "not_json",
                f"the answer to {method} {response.url.path} is not JSON "
                f"({response.headers.get('content-type', 'no content type')}); is {self._http.base_url} "
                "the taskplatform API?",
            ) from None

    async def submit(
        self,
        task_type: str | type[BackgroundTaskExecutable[Any, Any]],
        parameters: BaseModel | dict[str, Any],
        *,
        user_id: str | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a task; returns its id. ``task_type`` may be the executable class.

        With ``idempotency_key``, submitting again with the same key (and user) returns the
        first task's id instead of creating another: safe to retry after a timeout.
        """
        type_name = task_type if isinstance(task_type, str) else task_type.task_type
        params = parameters.model_dump(mode="json") if isinstance(parameters, BaseModel) else parameters
        body: dict[str, Any] = {
            "task_type": type_name,
            "parameters": params,
            "priority": priority,
            "tags": tags or [],
            "metadata": metadata or {},
        }
        if user_id is not None:
            body["user_id"] = user_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        data = await self._request("POST", "/api/v1/tasks", json=body, headers=headers)
        return str(data["task_id"])

    async def get(self, task_id: str) -> BackgroundTask:
        return BackgroundTask.model_validate(await self._request("GET", f"/api/v1/tasks/{task_id}"))

    async def update(
        self,
        task_id: str,
        *,
        priority: int | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BackgroundTask:
        """Change a QUEUED task's priority, tags or metadata (each given one replaces the task's);
        ApiError 409 once it has started."""
        body = _present({"priority": priority, "tags": tags, "metadata": metadata})
        return BackgroundTask.model_validate(
            await self._request("PATCH", f"/api/v1/tasks/{task_id}", json=body)
        )

    async def delete(self, task_id: str) -> list[str]:
        """Delete a finished task and its sub-tasks; returns the ids deleted. ApiError 409 while
        it (or a sub-task) has not finished, or for a sub-task (it goes with its parent)."""
        data = await self._request("DELETE", f"/api/v1/tasks/{task_id}")
        return [str(i) for i in data["deleted"]]

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Request cancellation; returns ``{task_id, status, cancel_requested}``. ApiError 409
        when the task already finished."""
        data: dict[str, Any] = await self._request("POST", f"/api/v1/tasks/{task_id}/cancel")
        return data

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float = 60.0,
        poll: float = 0.1,
        on_update: Callable[[BackgroundTask], None] | None = None,
    ) -> BackgroundTask:
        """Poll every ``poll`` seconds until the task is terminal, calling ``on_update`` with each
        task read (the last one included); WaitTimedOut (a TimeoutError) after ``timeout``
        seconds, the task as last seen on it."""
        deadline = time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if on_update is not None:
                on_update(task)
            if task.status in TERMINAL:
                return task
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimedOut(task, timeout)
            await asyncio.sleep(min(poll, left))

    async def result(
        self, executable: type[BackgroundTaskExecutable[Any, R]], task_id: str, *, timeout: float = 60.0
    ) -> R:
        """Wait for the task and return its result as the executable's Result model."""
        task = await self.wait(task_id, timeout=timeout)
        if task.status is not TaskStatus.COMPLETED:
            raise TaskFailedError(task)
        return executable.Result.model_validate(task.result)  # type: ignore[return-value]

    # ------------------------------------------------------------ dead letters
    async def _dead_letters(self, method: str, path: str = "", **kwargs: Any) -> Any:
        return await self._request(method, DEAD_LETTERS + path, headers=self._operator_headers, **kwargs)

    @staticmethod
    def _record_path(record_id: str) -> str:
        # Ids come from task ids or message hashes; quote so "/" or "?" cannot change the route.
        return "/" + quote(record_id, safe="")

    async def list_dead_letters(
        self,
        *,
        status: str | DeadLetterStatus | None = None,
        task_type: str | None = None,
        reason: str | None = None,
        user_id: str | None = None,
        error_type: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeadLetterListing:
        """One page of dead letters matching every given filter.

        ``status`` is pending (the API's default), replayed, discarded or ``any``;
        ``since`` (inclusive) and ``until`` (exclusive) bound the time a record was last seen.
        """
        filters: dict[str, FilterValue] = {
            "status": status,
            "task_type": task_type,
            "reason": reason,
            "user_id": user_id,
            "error_type": error_type,
            "since": since,
            "until": until,
            "cursor": cursor,
        }
        params = {k: _wire(v) for k, v in _present(filters).items()}
        params["limit"] = str(limit)
        return DeadLetterListing.model_validate(await self._dead_letters("GET", params=params))

    async def get_dead_letter(self, record_id: str) -> DeadLetter:
        """One dead letter, whole (body, headers, x-death history). ApiError 404 if unknown."""
        return DeadLetter.model_validate(await self._dead_letters("GET", self._record_path(record_id)))

    async def replay_dead_letter(
        self, record_id: str, parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send the record's task back to QUEUED, with ``parameters`` replacing its own when given.

        Returns the API's ``{dead_letter, task_id, task_status}``. ApiError 409 if the record
        was replayed or discarded already, 422 if ``parameters`` do not fit the task type.
        """
        kwargs: dict[str, Any] = {}
        if parameters is not None:
            kwargs["json"] = {"parameters": dict(parameters)}
        data: dict[str, Any] = await self._dead_letters(
            "POST", self._record_path(record_id) + "/replay", **kwargs
        )
        return data

    async def replay_dead_letters(
        self,
        *,
        dry_run: bool = False,
        limit: int = 100,
        rate: float | None = None,
        task_type: str | None = None,
        reason: str | None = None,
        user_id: str | None = None,
        error_type: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Replay up to ``limit`` pending dead letters matching the filters, ``rate`` per second
        (the server's ``DLQ_REPLAY_RATE`` when None); ``dry_run`` only lists what matches.

        Returns the API's ``{dry_run, matched, replayed, failed: {id: why}, seconds}``. The
        server paces the replays within the request, so unless ``timeout`` is given the wait
        for the answer is the client timeout plus ``limit / rate`` seconds, and unbounded
        when ``rate`` is None (the pace is then the server's).
        """
        filters: dict[str, FilterValue] = {
            "task_type": task_type,
            "reason": reason,
            "user_id": user_id,
            "error_type": error_type,
            "since": since,
            "until": until,
        }
        body: dict[str, Any] = {k: _wire(v) for k, v in _present(filters).items()}
        body.update(_present({"limit": limit, "dry_run": dry_run, "rate": rate}))
        if timeout is None and not dry_run:
            read = None if rate is None else self._timeout + limit / rate
            wait = httpx.Timeout(self._timeout, read=read)
        else:
            wait = httpx.Timeout(self._timeout if timeout is None else timeout)
        data: dict[str, Any] = await self._dead_letters("POST", "/replay", json=body, timeout=wait)
        return data

    async def discard_dead_letter(self, record_id: str) -> DeadLetter:
        """Give a dead letter up (its task stays DEAD_LETTER); returns the record after."""
        return DeadLetter.model_validate(await self._dead_letters("DELETE", self._record_path(record_id)))

    async def dead_letter_audit(
        self, *, dead_letter_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> AuditListing:
        """A page of the operator audit log, newest first, optionally for one dead letter.

        Returns an ``AuditListing``: ``items`` (``AuditEntry``) and ``next_cursor``, which
        is None on the last page and otherwise goes back in as ``cursor``.
        """
        params = _present({"dead_letter_id": dead_letter_id, "cursor": cursor, "limit": limit})
        return AuditListing.model_validate(await self._dead_letters("GET", "/audit", params=params))
