"""Between the platform's models and the gRPC messages (``v1/tasks.proto``).

A task's message carries what ``GET /api/v1/tasks/{id}`` returns, field for field. JSON objects
travel as ``google.protobuf.Struct``, whose numbers are doubles: integral numbers within 2**53
come back as ``int`` (a strict ``int`` parameter accepts nothing else), others stay ``float``.
A caller that needs exact integers beyond 2**53 sends ``parameters_json`` instead.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from taskplatform.errors import InvalidInputError
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.models import MAX_PRIORITY, BackgroundTask, ErrorInfo, TaskStatus
from taskplatform.models.target import TaskTarget
from taskplatform.models.task import SubTaskStatusSummary
from taskplatform.storable import MAX_NESTING, MAX_TAGS
from taskplatform.store.types import MAX_PAGE_SIZE, TaskFilter
from taskplatform.submission import SubmitRequest

#: PostgreSQL text cannot hold NUL: refused as bad input, as the HTTP API does.
NO_NUL = r"^[^\x00]*$"

#: Integers a double holds exactly.
_EXACT = 2**53
#: The proto enum's values for the platform's statuses, and back.
_PREFIX = "TASK_STATUS_"
STATUS_TO_PB = {status: pb.TaskStatus.Value(_PREFIX + status.value) for status in TaskStatus}
PB_TO_STATUS = {number: status for status, number in STATUS_TO_PB.items()}


# ------------------------------------------------------------------ values
def _plain(value: Any) -> Any:
    """A Struct's value with integral doubles as ints (see the module's docstring)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def from_struct(struct: struct_pb2.Struct, field: str = "parameters") -> dict[str, Any]:
    """A Struct as a JSON object; InvalidInputError for what JSON cannot hold (NaN, infinity)."""
    try:
        return dict(_plain(json_format.MessageToDict(struct)))
    except ValueError as exc:
        raise InvalidInputError((field,), f"not JSON: {exc}") from None


#: JSON levels a reply's Struct carries at most: each takes 3 protobuf levels, and a client
#: parses 100 (the task message's own levels included). Deeper bodies go as JSON text.
STRUCT_DEPTH = 30


def _depth(value: Any, level: int = 0) -> int:
    if level > STRUCT_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def body_into(value: dict[str, Any] | None, message: Any, name: str) -> None:
    """``value`` into ``message``'s Struct ``name``, or, nested deeper than a client parses, into
    its text field ``name_json``."""
    if value is None:
        return
    if _depth(value) > STRUCT_DEPTH:
        setattr(message, f"{name}_json", json.dumps(value, separators=(",", ":")))
    else:
        to_struct(value, getattr(message, name))


def to_struct(value: dict[str, Any] | None, into: struct_pb2.Struct) -> None:
    """Fill ``into`` with a JSON object (None leaves it unset)."""
    if value is not None:
        into.update(_finite(value))


def _finite(value: Any) -> Any:
    """JSON as a Struct may hold it: integers beyond a double's range as text."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= _EXACT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return str(value)


def to_timestamp(value: datetime | None, into: timestamp_pb2.Timestamp) -> None:
    if value is not None:
        into.FromDatetime(value.astimezone(UTC))


def from_timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    moment: datetime = value.ToDatetime(tzinfo=UTC)
    return moment


# ------------------------------------------------------------------ requests
def submit_request(request: pb.CreateTaskRequest) -> SubmitRequest:
    """The HTTP body ``CreateTask`` stands for; pydantic's ValidationError when it is invalid
    (the same checks as ``POST /api/v1/tasks``), InvalidInputError for bad ``parameters_json``."""
    body: dict[str, Any] = {"task_type": request.task_type}
    which = request.WhichOneof("params")
    if which == "parameters":
        body["parameters"] = from_struct(request.parameters)
    elif which == "parameters_json":
        body["parameters"] = _json_object(request.parameters_json, "parameters_json")
    if request.priority:
        body["priority"] = request.priority
    if request.tags:
        body["tags"] = list(request.tags)
    if request.HasField("metadata"):
        body["metadata"] = from_struct(request.metadata, "metadata")
    if request.HasField("user_id"):
        body["user_id"] = request.user_id
    if request.HasField("target"):
        body["target"] = _target_body(request.target)
    return SubmitRequest.model_validate(body)


def task_id(value: str) -> str:
    """A task id as the HTTP path takes it (1 to 64 characters, no NUL); InvalidInputError."""
    if not 1 <= len(value) <= 64 or "\x00" in value:
        raise InvalidInputError(("task_id",), "a task id is 1 to 64 characters without NUL")
    return value


def idempotency_key(value: str) -> str | None:
    """The key as the ``Idempotency-Key`` header takes it (empty: none; at most 255 characters,
    no NUL); InvalidInputError."""
    if not value:
        return None
    if len(value) > 255 or "\x00" in value:
        raise InvalidInputError(("idempotency_key",), "an idempotency key is 1 to 255 characters without NUL")
    return value


def _json_object(text: str, field: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError((field,), f"not JSON: {exc}") from None
    except RecursionError:  # nested past what the parser takes; the storable limit is far lower
        raise InvalidInputError((field,), f"nested deeper than {MAX_NESTING} levels") from None
    if not isinstance(value, dict):
        raise InvalidInputError((field,), f"a JSON object is needed, not {type(value).__name__}")
    return value


def _target_body(target: pb.TaskTarget) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if target.HasField("node"):
        body["node"] = target.node
    if target.labels:
        body["labels"] = dict(target.labels)
    if target.mode:
        body["mode"] = target.mode
    if target.target_timeout:
        body["target_timeout"] = target.target_timeout
    return body


class ListQuery(BaseModel):
    """``ListTasks``'s filters with the bounds the HTTP list's query string has."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    task_type: str | None = Field(default=None, max_length=128, pattern=NO_NUL)
    user_id: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    parent_task_id: str | None = Field(default=None, max_length=64, pattern=NO_NUL)
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    tags: list[Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    cursor: str | None = Field(default=None, max_length=512)


def list_query(request: pb.ListTasksRequest) -> ListQuery:
    """The request's filters (empty fields filter nothing); ValidationError when out of bounds,
    InvalidInputError for a status number the enum does not have."""
    if request.status and request.status not in PB_TO_STATUS:
        raise InvalidInputError(("status",), f"no task status has the number {request.status}")
    return ListQuery.model_validate(
        {
            "status": PB_TO_STATUS.get(request.status),
            "task_type": request.task_type or None,
            "user_id": request.user_id or None,
            "parent_task_id": request.parent_task_id or None,
            "priority": request.priority if request.HasField("priority") else None,
            "tags": list(request.tags),
            "cursor": request.cursor or None,
        }
    )


def list_filter(query: ListQuery) -> TaskFilter:
    return TaskFilter(
        status=query.status,
        task_type=query.task_type,
        user_id=query.user_id,
        parent_task_id=query.parent_task_id,
        priority=query.priority,
        tags=tuple(query.tags),
    )


def page_limit(request: pb.ListTasksRequest) -> int:
    """``limit``, 50 when 0; InvalidInputError outside 1 to ``MAX_PAGE_SIZE``."""
    if request.limit == 0:
        return 50
    if not 1 <= request.limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(("limit",), f"must be between 1 and {MAX_PAGE_SIZE} (or 0 for 50)")
    return request.limit


# ------------------------------------------------------------------ answers
_TIMES = ("created_at", "updated_at", "started_at", "completed_at", "last_attempt_at", "next_attempt_at")


def task_message(task: BackgroundTask, *, summary: bool = False) -> pb.Task:
    """The task's message; ``summary`` leaves out parameters, result, progress and metadata."""
    out = pb.Task(
        id=task.id,
        task_type=task.task_type,
        status=STATUS_TO_PB[task.status],
        retry_count=task.retry_count,
        version=task.version,
        priority=task.priority,
        tags=task.tags,
        cancel_requested=task.cancel_requested,
        replays=task.replays,
    )
    for name in ("user_id", "execution_node_id", "parent_task_id", "idempotency_key"):
        value = getattr(task, name)
        if value is not None:
            setattr(out, name, value)
    if not summary:
        for name in ("parameters", "progress", "result", "metadata"):
            body_into(getattr(task, name), out, name)
    if task.error_info is not None:
        out.error_info.CopyFrom(error_message(task.error_info))
    for name in _TIMES:
        to_timestamp(getattr(task, name), getattr(out, name))
    if task.sub_task_status_summary is not None:
        out.sub_task_status_summary.CopyFrom(children_message(task.sub_task_status_summary))
    if task.target is not None:
        out.target.CopyFrom(target_message(task.target))
    return out


def error_message(error: ErrorInfo) -> pb.ErrorInfo:
    out = pb.ErrorInfo(type=error.type, message=error.message, attempt=error.attempt)
    for name in ("traceback", "node_id", "reason"):
        value = getattr(error, name)
        if value is not None:
            setattr(out, name, value)
    to_timestamp(error.occurred_at, out.occurred_at)
    return out


def children_message(summary: SubTaskStatusSummary) -> pb.SubTaskSummary:
    return pb.SubTaskSummary(**summary.model_dump())


def target_message(target: TaskTarget) -> pb.TaskTarget:
    out = pb.TaskTarget(mode=target.mode, target_timeout=target.target_timeout)
    if target.node is not None:
        out.node = target.node
    if target.labels is not None:
        out.labels.update(target.labels)
    return out


def status_reply(task: BackgroundTask) -> pb.TaskStatusReply:
    """``GetTaskStatus``: status, result, error, progress and children counts."""
    out = pb.TaskStatusReply(task_id=task.id, status=STATUS_TO_PB[task.status])
    body_into(task.result, out, "result")
    body_into(task.progress, out, "progress")
    if task.error_info is not None:
        out.error_message = task.error_info.message
        out.error.CopyFrom(error_message(task.error_info))
    if task.sub_task_status_summary is not None:
        out.children.CopyFrom(children_message(task.sub_task_status_summary))
    to_timestamp(task.updated_at, out.updated_at)
    return out
