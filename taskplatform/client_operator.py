"""The client's operator calls (the operator or admin role): dead letters and their audit log, and
the worker registry. A mixin of ``TaskPlatformClient``, which re-exports every name here."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models import AuditEntry, DeadLetter, DeadLetterStatus
from taskplatform.models.worker import WorkerState


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
AUDIT = "/api/v1/audit"
#: A filter value as the client takes it: text, a status, or a time (sent as ISO 8601).
FilterValue = str | DeadLetterStatus | datetime | None


def _wire(value: str | DeadLetterStatus | datetime) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values: a filter that is not given is not sent."""
    return {k: v for k, v in values.items() if v is not None}


class WorkerInfo(BaseModel):
    """A worker as the API shows it: its registry record (times on the store's clock), whether it
    was ``online`` when the API answered, and its ``load`` (running / concurrency, to 3 places)."""

    model_config = ConfigDict(extra="ignore")

    node_id: str
    host: str
    pid: int
    labels: dict[str, str] = Field(default_factory=dict)
    task_types: list[str] = Field(default_factory=list)
    queue_groups: list[str] = Field(default_factory=list)
    concurrency: int
    running: int
    version: str
    started_at: datetime
    last_seen_at: datetime
    heartbeat_seconds: float
    expires_at: datetime
    state: WorkerState
    state_changed_at: datetime
    online: bool
    load: float


class WorkerListing(BaseModel):
    """A page of workers by node id; ``next_cursor`` is None on the last page."""

    items: list[WorkerInfo]
    next_cursor: str | None = None


WORKERS = "/api/v1/workers"


class OperatorCalls:
    """The DeadLetter and worker registry API calls of ``TaskPlatformClient``."""

    _timeout: float
    _operator_headers: dict[str, str]

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        raise NotImplementedError  # TaskPlatformClient's

    # ------------------------------------------------------------ dead letters
    async def _dead_letters(self, method: str, path: str = "", **kwargs: Any) -> Any:
        return await self._request(method, DEAD_LETTERS + path, headers=self._operator_headers, **kwargs)

    @staticmethod
    def _record_path(record_id: str) -> str:
        # Ids come from task ids, message hashes or host names; quote so "/" or "?" cannot change
        # the route.
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

    async def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        task_id: str | None = None,
        dead_letter_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> AuditListing:
        """A page of the audit log (``GET /api/v1/audit``: task and dead-letter actions), newest
        first, filtered; ``since``/``until`` need a UTC offset."""
        params = _present(
            {
                "actor": actor,
                "action": action,
                "task_id": task_id,
                "dead_letter_id": dead_letter_id,
                "since": since.isoformat() if since is not None else None,
                "until": until.isoformat() if until is not None else None,
                "cursor": cursor,
                "limit": limit,
            }
        )
        return AuditListing.model_validate(
            await self._request("GET", AUDIT, params=params, headers=self._operator_headers)
        )

    # ------------------------------------------------------------ workers
    async def list_workers(
        self,
        *,
        online: bool | None = None,
        state: str | WorkerState | None = None,
        host: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WorkerListing:
        """One page of the worker registry, by node id, matching every given filter.

        ``online`` True: present now (on the store's clock), False: stopped, offline or silent;
        ``labels``: the worker carries each of them. ``next_cursor`` goes back in as ``cursor``.
        """
        params: dict[str, Any] = _present({"state": state, "host": host, "cursor": cursor})
        params = {k: str(v) for k, v in params.items()}
        if online is not None:
            params["online"] = "true" if online else "false"
        if labels:
            params["label"] = [f"{key}={value}" for key, value in labels.items()]
        params["limit"] = str(limit)
        return WorkerListing.model_validate(await self._request("GET", WORKERS, params=params))

    async def get_worker(self, node_id: str) -> WorkerInfo:
        """One worker. ApiError 404 if the registry has no record of ``node_id``."""
        return WorkerInfo.model_validate(await self._request("GET", WORKERS + self._record_path(node_id)))
