"""Between models and gRPC messages, without a server: Struct numbers, the JSON text form, the
request's bounds, a task's every field."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2
from pydantic import ValidationError

from taskplatform.errors import InvalidInputError
from taskplatform.grpc_api import convert
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus
from taskplatform.models.target import TaskTarget
from taskplatform.models.task import SubTaskStatusSummary


def test_every_status_has_its_enum_value_and_back() -> None:
    assert len(convert.STATUS_TO_PB) == len(TaskStatus) == len(pb.TaskStatus.keys()) - 1
    for status, number in convert.STATUS_TO_PB.items():
        assert pb.TaskStatus.Name(number) == f"TASK_STATUS_{status.value}"
        assert convert.PB_TO_STATUS[number] is status
    assert pb.TASK_STATUS_UNSPECIFIED not in convert.PB_TO_STATUS


def test_struct_numbers_come_back_as_ints_when_integral_and_exact() -> None:
    struct = struct_pb2.Struct()
    struct.update({"n": 3, "f": 2.5, "big": 2.0**60, "neg": -7, "nested": {"xs": [1, 2.0, 0.5]}})
    assert convert.from_struct(struct) == {
        "n": 3,
        "f": 2.5,
        "big": 2.0**60,  # beyond 2**53: a double, kept as one
        "neg": -7,
        "nested": {"xs": [1, 2, 0.5]},
    }
    assert isinstance(convert.from_struct(struct)["n"], int)


def test_a_struct_carries_what_a_double_cannot_as_text() -> None:
    out = struct_pb2.Struct()
    convert.to_struct(
        {"big": 2**60, "ok": 2**53, "inf": math.inf, "nan": math.nan, "t": True, "o": None}, out
    )
    back = convert.from_struct(out)
    assert back["big"] == str(2**60) and back["ok"] == 2**53
    assert back["inf"] == "inf" and back["nan"] == "nan" and back["t"] is True and back["o"] is None
    untouched = struct_pb2.Struct()
    convert.to_struct(None, untouched)
    assert not untouched.fields


def test_parameters_as_json_text_keep_exact_integers_and_refuse_what_is_not_an_object() -> None:
    request = pb.CreateTaskRequest(task_type="t", parameters_json='{"n": 9007199254740993}')
    assert convert.submit_request(request).parameters == {"n": 9007199254740993}
    for text, why in (
        ("{", "not JSON"),
        ("[1]", "a JSON object is needed, not list"),
        ("3", "a JSON object is needed, not int"),
    ):
        with pytest.raises(InvalidInputError) as caught:
            convert.submit_request(pb.CreateTaskRequest(task_type="t", parameters_json=text))
        assert caught.value.location == ("parameters_json",) and why in str(caught.value)


def test_a_request_is_held_to_the_http_bodys_rules() -> None:
    with pytest.raises(ValidationError) as caught:
        convert.submit_request(pb.CreateTaskRequest(task_type="t", priority=10))
    assert caught.value.errors()[0]["loc"] == ("priority",)
    with pytest.raises(ValidationError):
        convert.submit_request(pb.CreateTaskRequest(task_type=""))
    target = pb.TaskTarget(mode="each", target_timeout=30)
    target.labels.update({"role": "db"})
    aimed = convert.submit_request(pb.CreateTaskRequest(task_type="t", target=target, user_id="bob"))
    assert aimed.target == TaskTarget(labels={"role": "db"}, mode="each", target_timeout=30)
    assert aimed.user_id == "bob"
    node = convert.submit_request(pb.CreateTaskRequest(task_type="t", target=pb.TaskTarget(node="n-1")))
    assert node.target is not None and node.target.node == "n-1"


def test_ids_keys_and_pages_are_bounded_as_over_http() -> None:
    assert convert.task_id("a" * 64) == "a" * 64
    for bad in ("", "a" * 65, "a\x00b"):
        with pytest.raises(InvalidInputError):
            convert.task_id(bad)
    assert convert.idempotency_key("") is None and convert.idempotency_key("k") == "k"
    for bad in ("k" * 256, "k\x00"):
        with pytest.raises(InvalidInputError):
            convert.idempotency_key(bad)
    assert convert.page_limit(pb.ListTasksRequest()) == 50
    assert convert.page_limit(pb.ListTasksRequest(limit=500)) == 500
    for bad in (-1, 501):
        with pytest.raises(InvalidInputError):
            convert.page_limit(pb.ListTasksRequest(limit=bad))
    with pytest.raises(ValidationError):
        convert.list_query(pb.ListTasksRequest(tags=["x"] * 100))
    with pytest.raises(ValidationError):
        convert.list_query(pb.ListTasksRequest(task_type="a\x00"))
    query = convert.list_query(pb.ListTasksRequest(status=pb.TASK_STATUS_FAILED, priority=0, tags=["a"]))
    filters = convert.list_filter(query)
    assert filters.status is TaskStatus.FAILED and filters.priority == 0 and filters.tags == ("a",)
    assert convert.list_filter(convert.list_query(pb.ListTasksRequest())).priority is None


def test_a_task_message_carries_every_field_and_a_summary_leaves_the_bodies_out() -> None:
    at = datetime(2026, 12, 7, 12, 0, 0, 123000, tzinfo=UTC)
    task = BackgroundTask(
        id="t-1",
        user_id="alice",
        task_type="t",
        status=TaskStatus.FAILED,
        parameters={"a": 1},
        progress={"percent": 50},
        result={"r": [1, 2]},
        error_info=ErrorInfo(
            type="E", message="m", traceback="tb", attempt=2, node_id="n", reason="x", occurred_at=at
        ),
        created_at=at,
        updated_at=at,
        started_at=at,
        completed_at=at,
        retry_count=2,
        execution_node_id="n",
        parent_task_id="p",
        sub_task_status_summary=SubTaskStatusSummary(total=3, failed=1, completed=2),
        version=7,
        priority=4,
        tags=["x", "y"],
        metadata={"m": "v"},
        idempotency_key="k",
        cancel_requested=True,
        replays=1,
        target=TaskTarget(node="n"),
    )
    message = convert.task_message(task)
    fields = ("id", "user_id", "task_type", "retry_count", "version", "priority", "replays")
    assert [getattr(message, n) for n in fields] == [getattr(task, n) for n in fields]
    assert list(message.tags) == ["x", "y"] and message.idempotency_key == "k"
    assert message.execution_node_id == "n" and message.parent_task_id == "p"
    assert message.cancel_requested and message.status == pb.TASK_STATUS_FAILED
    for name in ("parameters", "progress", "result", "metadata"):
        assert convert.from_struct(getattr(message, name)) == getattr(task, name), name
    assert message.error_info.traceback == "tb" and message.error_info.attempt == 2
    assert convert.from_timestamp(message.error_info.occurred_at) == at
    for name in ("created_at", "updated_at", "started_at", "completed_at"):
        assert convert.from_timestamp(getattr(message, name)) == at, name
    assert not message.HasField("last_attempt_at") and not message.HasField("next_attempt_at")
    assert message.sub_task_status_summary.total == 3 and message.sub_task_status_summary.failed == 1
    assert message.target.node == "n"

    summary = convert.task_message(task, summary=True)
    for name in ("parameters", "progress", "result", "metadata"):
        assert not summary.HasField(name), name

    reply = convert.status_reply(task)
    assert reply.error_message == "m" and reply.error.type == "E" and reply.children.completed == 2
    bare = convert.task_message(BackgroundTask(task_type="t"))
    for name in ("user_id", "execution_node_id", "parent_task_id", "idempotency_key", "error_info", "target"):
        assert not bare.HasField(name), name
