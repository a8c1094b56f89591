"""A small async client for the HTTP API, typed by executable class when you want it. The
operator calls (dead letters, the audit log, the worker registry) are in ``client_operator``;
their models are importable from here too."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from taskplatform.client_operator import DEAD_LETTERS as DEAD_LETTERS
from taskplatform.client_operator import WORKERS as WORKERS
from taskplatform.client_operator import AuditListing as AuditListing
from taskplatform.client_operator import DeadLetterListing as DeadLetterListing
from taskplatform.client_operator import FilterValue as FilterValue
from taskplatform.client_operator import OperatorCalls, _present
from taskplatform.client_operator import WorkerInfo as WorkerInfo
from taskplatform.client_operator import WorkerListing as WorkerListing
from taskplatform.errors import TaskPlatformError
from taskplatform.models import TERMINAL, BackgroundTask, TaskStatus
from taskplatform.models.attempt import AttemptRecord
from taskplatform.models.target import TaskTarget
from taskplatform.store.types import TaskPage
from taskplatform.tasks.executable import BackgroundTaskExecutable

if TYPE_CHECKING:
    from taskplatform.settings import PlatformSettings

R = TypeVar("R", bound=BaseModel)


class AttemptListing(BaseModel):
    """A task's attempts, oldest first (``TaskPlatformClient.attempts``)."""

    task_id: str
    status: TaskStatus
    attempts: list[AttemptRecord]


class ApiError(TaskPlatformError):
    """The API answered with an error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        self.status = status
        self.code = code
        self.details = details
        super().__init__(f"HTTP {status} {code}: {message}")


class BulkResult(BaseModel):
    """One task of :meth:`TaskPlatformClient.submit_many`, at ``index`` in the list given.
    ``outcome``: ``created``; ``existing`` (its idempotency key made this task before);
    ``stored_unpublished`` (stored while the broker was away: published when it returns)."""

    index: int
    task_id: str
    status: TaskStatus
    outcome: Literal["created", "existing", "stored_unpublished"]


#: ``BulkSubmitError.code`` when a bulk request got no answer (time-out, connection lost).
BULK_NO_ANSWER = "no_answer"


class BulkSubmitError(ApiError):
    """The API refused one request of :meth:`TaskPlatformClient.submit_many`, or it got no answer
    (``code`` ``no_answer``, ``status`` 0). The tasks of the requests before it were stored
    (``results``); those from ``first`` on were not sent or not stored (refused), or may have been
    (no answer). Indexes in ``details`` (``index``, ``indexes``, ``loc``) are into the whole list."""

    def __init__(self, error: ApiError, results: list[BulkResult], first: int, count: int) -> None:
        self.results = results
        self.first = first
        self.count = count
        #: The API's message, as it said it.
        self.message = message = str(error).split(": ", 1)[1] if ": " in str(error) else str(error)
        if first:
            message += f" (in the request from task {first} on; tasks 0 to {first - 1} were stored)"
        super().__init__(error.status, error.code, message, _shifted(error.details, first))


def _shifted(details: Any, offset: int) -> Any:
    """A bulk request's error details with item indexes moved by ``offset`` (the request's first
    item's index in the whole list)."""
    if not isinstance(details, list) or not offset:
        return details
    out = []
    for detail in details:
        if not isinstance(detail, dict):
            out.append(detail)
            continue
        moved = dict(detail)
        if isinstance(moved.get("index"), int):
            moved["index"] += offset
        if isinstance(moved.get("indexes"), list):
            moved["indexes"] = [i + offset if isinstance(i, int) else i for i in moved["indexes"]]
        loc = moved.get("loc")
        if isinstance(loc, list) and "tasks" in loc:
            at = loc.index("tasks") + 1
            if at < len(loc) and isinstance(loc[at], int):
                moved["loc"] = [*loc[:at], loc[at] + offset, *loc[at + 1 :]]
        out.append(moved)
    return out


#: The most tasks the API takes in one bulk request (``submission.MAX_BULK_TASKS``).
BULK_MAX_TASKS = 1000
#: Body bytes :meth:`TaskPlatformClient.submit_many` keeps each request under by default: the
#: API's default ``MAX_BODY_BYTES``.
BULK_MAX_BYTES = 1_048_576
#: ``{"tasks":[`` and ``]}`` around a bulk request's items.
_ENVELOPE = (b'{"tasks":[', b"]}")


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


def _bulk_item(index: int, task: Mapping[str, Any]) -> bytes:
    """One task of a bulk request as compact JSON (a class as ``task_type`` by its name, a model
    as ``parameters`` dumped); ValueError naming ``index`` if it cannot be sent."""
    item = dict(task)
    task_type = item.get("task_type")
    if isinstance(task_type, type) and issubclass(task_type, BackgroundTaskExecutable):
        item["task_type"] = task_type.task_type
    if isinstance(item.get("parameters"), BaseModel):
        item["parameters"] = item["parameters"].model_dump(mode="json")
    try:
        text = json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task {index} cannot be sent as JSON: {exc}") from None


def _chunks(items: list[bytes], count: int, room: int) -> Iterable[tuple[int, list[bytes]]]:
    """``items`` in runs of at most ``count`` whose joined size fits ``room`` bytes, each with
    the index of its first item."""
    first, size = 0, 0
    chunk: list[bytes] = []
    for i, item in enumerate(items):
        if chunk and (len(chunk) == count or size + 1 + len(item) > room):
            yield first, chunk
            first, chunk, size = i, [], 0
        size += len(item) + (1 if chunk else 0)
        chunk.append(item)
    if chunk:
        yield first, chunk


class TaskPlatformClient(OperatorCalls):
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
        target: TaskTarget | Mapping[str, Any] | None = None,
    ) -> str:
        """Submit a task; returns its id. ``task_type`` may be the executable class.

        With ``idempotency_key``, submitting again with the same key (and user) returns the
        first task's id instead of creating another: safe to retry after a timeout. ``target``
        aims it at a worker node (``{"node": "db-1"}``) or, with ``mode: each``, at every online
        worker carrying some labels (the id is then the parent's; ``list_children`` shows each
        host's child).
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
        if target is not None:
            aimed = target if isinstance(target, TaskTarget) else TaskTarget.model_validate(dict(target))
            body["target"] = aimed.model_dump(mode="json", exclude_none=True)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        data = await self._request("POST", "/api/v1/tasks", json=body, headers=headers)
        return str(data["task_id"])

    async def submit_many(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        chunk_size: int = BULK_MAX_TASKS,
        max_request_bytes: int = BULK_MAX_BYTES,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[BulkResult]:
        """Submit many tasks through ``POST /api/v1/tasks/bulk``; one result per task, in order.

        Each task is a mapping like :meth:`submit`'s arguments: ``task_type`` (a name or the
        executable class), ``parameters`` (a dict or a model), and optionally ``user_id``,
        ``priority``, ``tags``, ``metadata`` and ``idempotency_key``. The list is sent in requests
        of at most ``chunk_size`` tasks (the API takes 1,000) and ``max_request_bytes`` of JSON
        (the API's ``MAX_BODY_BYTES``), one after another; ``on_progress`` gets the number of
        tasks submitted after each. Each request is all or nothing: BulkSubmitError when one is
        refused (those before it were stored). With idempotency keys, sending the whole list
        again after a failure is safe: what was stored comes back as ``existing``. ValueError,
        before anything is sent, for a task that cannot be sent as JSON or is larger than a
        request may be.
        """
        if not 1 <= chunk_size <= BULK_MAX_TASKS:
            raise ValueError(f"chunk_size must be 1 to {BULK_MAX_TASKS}, got {chunk_size}")
        encoded = [_bulk_item(i, task) for i, task in enumerate(tasks)]
        room = max_request_bytes - sum(map(len, _ENVELOPE))
        for i, item in enumerate(encoded):
            if len(item) > room:
                raise ValueError(
                    f"task {i} is {len(item)} bytes as JSON: a bulk request of it alone would exceed "
                    f"{max_request_bytes} bytes (max_request_bytes, the API's MAX_BODY_BYTES)"
                )
        results: list[BulkResult] = []
        for first, chunk in _chunks(encoded, chunk_size, room):
            body = _ENVELOPE[0] + b",".join(chunk) + _ENVELOPE[1]
            try:
                data = await self._request(
                    "POST", "/api/v1/tasks/bulk", content=body, headers={"Content-Type": "application/json"}
                )
            except ApiError as exc:
                raise BulkSubmitError(exc, results, first, len(encoded)) from None
            except httpx.HTTPError as exc:  # sent, perhaps stored, no answer: say so, keep the results
                no_answer = ApiError(
                    0,
                    BULK_NO_ANSWER,
                    f"no answer to the request from task {first} on ({type(exc).__name__}: {exc}); its "
                    "tasks may or may not have been stored: send them again with idempotency keys to be sure",
                )
                raise BulkSubmitError(no_answer, results, first, len(encoded)) from exc
            for item in data["results"]:
                results.append(BulkResult.model_validate({**item, "index": first + int(item["index"])}))
            if on_progress is not None:
                on_progress(len(results))
        return results

    async def get(self, task_id: str) -> BackgroundTask:
        return BackgroundTask.model_validate(await self._request("GET", f"/api/v1/tasks/{task_id}"))

    async def list_children(
        self,
        task_id: str,
        *,
        node: str | None = None,
        status: TaskStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of a parent's children, newest first; ``node``: only those aimed at or run on
        that worker node (a fan-out's host)."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("node", node), ("status", status), ("cursor", cursor)):
            if value is not None:
                params[name] = str(value)
        data = await self._request("GET", f"/api/v1/tasks/{task_id}/children", params=params)
        return TaskPage.model_validate(data)

    async def attempts(self, task_id: str) -> AttemptListing:
        """The task's attempts, oldest first (``GET /api/v1/tasks/{id}/attempts``), the one
        running now included."""
        data = await self._request("GET", f"/api/v1/tasks/{task_id}/attempts")
        return AttemptListing.model_validate(data)

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
