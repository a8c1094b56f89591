"""The worker registry API: the workers that beat (or beat once), each with its presence and load.

Operators and admins only: records name hosts. Presence is judged here, on the store's clock:
a record is online while its state is ``online`` or ``stopping`` and its ``expires_at`` lies ahead
(``WorkerRecord.online_at``), so a worker that went silent reads offline before the sweep marks it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import AfterValidator, BaseModel, Field

from taskplatform.api.auth import AUTH_RESPONSES, require_operator
from taskplatform.api.deps import NO_NUL, RuntimeDep
from taskplatform.api.errors import ErrorBody
from taskplatform.models.worker import MAX_LABELS, WorkerRecord, WorkerState, parse_labels
from taskplatform.store.types import MAX_PAGE_SIZE
from taskplatform.store.workers import WorkerFilter, decode_worker_cursor

ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    **{code: {"model": ErrorBody} for code in (422, 503)},
}

NodeId = Annotated[
    str, Path(min_length=1, max_length=255, pattern=NO_NUL, description="The worker's node id")
]


def _one_label(text: str) -> str:
    """``text`` if it is one plain ``key=value``; ValueError naming it otherwise."""
    if len(parse_labels(text)) != 1:
        raise ValueError(f"label {text!r}: give one key=value per label parameter, e.g. label=region=eu")
    return text


def _label_set(items: list[str] | None) -> list[str] | None:
    """Each key once, at most MAX_LABELS of them."""
    if items:
        keys = [item.partition("=")[0].strip() for item in items]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ValueError(f"label key {twice[0]!r} is given twice")
        if len(items) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels, got {len(items)}")
    return items


LabelQuery = Annotated[
    list[Annotated[str, AfterValidator(_one_label)]] | None,
    AfterValidator(_label_set),
    Query(
        description="key=value: workers carrying this label; repeat for several (all must match). Keys: a "
        "letter or digit, then letters, digits, '_', '.', '-' or '/' (at most 63); values: 1 to 63 "
        "letters, digits, '_', '.' or '-'",
    ),
]

router = APIRouter(
    prefix="/api/v1/workers",
    tags=["workers"],
    responses=ERRORS,
    dependencies=[Depends(require_operator)],
)


class WorkerView(BaseModel):
    """A worker process as the registry keeps it (times on the store's clock), with its presence
    and load judged when the request was answered."""

    node_id: str = Field(description="Unique per process: host, pid and a random suffix")
    host: str = Field(description="The host name the worker runs on")
    pid: int = Field(description="The worker's process id on its host")
    labels: dict[str, str] = Field(description="The worker's labels (WORKER_LABELS)")
    task_types: list[str] = Field(description="The task types it runs")
    queue_groups: list[str] = Field(description="The queue groups (work queues) it consumes")
    concurrency: int = Field(description="Attempts it runs at once at most")
    running: int = Field(description="Attempts it was running at its last beat")
    version: str = Field(description="The taskplatform version it runs")
    started_at: datetime = Field(description="When the process started")
    last_seen_at: datetime = Field(description="Its last beat")
    heartbeat_seconds: float = Field(description="Its interval between beats")
    expires_at: datetime = Field(description="Its last beat plus three intervals: present until then")
    state: WorkerState = Field(
        description="online, stopping (finishing its attempts), stopped (exited cleanly) or offline "
        "(missed its beats)"
    )
    state_changed_at: datetime = Field(description="When state last changed")
    online: bool = Field(
        description="Present now: state online or stopping, and expires_at ahead on the store's clock"
    )
    load: float = Field(description="running / concurrency, to 3 places (0 without slots)")

    @classmethod
    def of(cls, record: WorkerRecord, now: datetime) -> WorkerView:
        """``record`` as seen at ``now`` (the store's clock)."""
        return cls(**record.model_dump(), online=record.online_at(now), load=round(record.load, 3))


class WorkerList(BaseModel):
    """A page of workers by node id; ``next_cursor`` is null on the last page."""

    items: list[WorkerView]
    next_cursor: str | None = None


@router.get(
    "",
    response_model=WorkerList,
    summary="List workers by node id",
    response_description="A page of workers matching every filter given",
)
async def list_workers(
    runtime: RuntimeDep,
    online: Annotated[
        bool | None,
        Query(description="true: present now (on the store's clock); false: stopped, offline or silent"),
    ] = None,
    state: Annotated[WorkerState | None, Query(description="the state its record says")] = None,
    host: Annotated[str | None, Query(max_length=255, pattern=NO_NUL, description="the host name")] = None,
    label: LabelQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="most workers on the page")] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the page before")] = None,
) -> WorkerList:
    if cursor is not None:
        decode_worker_cursor(cursor)  # a cursor no store made is bad input on every backend
    # each item is one plain key=value and no key comes twice (LabelQuery): together, the labels
    filters = WorkerFilter(online=online, state=state, host=host, labels=parse_labels(",".join(label or ())))
    page = await runtime.store.list_workers(filters, limit=limit, cursor=cursor)
    now = runtime.store.now()
    return WorkerList(items=[WorkerView.of(w, now) for w in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{node_id:path}",
    response_model=WorkerView,
    summary="One worker",
    response_description="The worker's record, presence and load",
    responses={404: {"model": ErrorBody, "description": "No worker with this node id"}},
)
async def get_worker(node_id: NodeId, runtime: RuntimeDep) -> WorkerView:
    record = await runtime.store.get_worker(node_id)
    if record is None:
        raise HTTPException(404, f"worker {node_id!r} not found")
    return WorkerView.of(record, runtime.store.now())
