from __future__ import annotations

from typing import Any

import orjson
import pytest

from taskplatform.errors import MessageDecodeError
from taskplatform.messaging.codec import decode, encode
from taskplatform.models import TaskMessage


class FakeIncoming:
    """Just the attributes decode() reads."""

    def __init__(self, body: bytes, headers: dict[str, Any] | None) -> None:
        self.body = body
        self.headers = headers


def roundtrip(message: TaskMessage) -> FakeIncoming:
    out = encode(message)
    return FakeIncoming(out.body, dict(out.headers or {}))


def test_encode_sets_persistence_ids_and_headers() -> None:
    msg = TaskMessage(task_id="t1", task_type="generate_summary", attempt=2, parameters={"a": 1})
    out = encode(msg)
    assert out.delivery_mode == 2
    assert out.message_id == "t1:2" and out.correlation_id == "t1"
    assert out.headers == {"x-task-id": "t1", "x-task-type": "generate_summary", "x-retry-count": 2}
    assert decode(roundtrip(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"{}", {"x-task-type": "a"}, "missing-header"),
        (b"{}", {"x-task-id": "", "x-task-type": "a"}, "missing-header"),
        (b"{}", None, "missing-header"),
        (b"\xff\xfe", {"x-task-id": "t", "x-task-type": "a"}, "bad-json"),
        (b"[1, 2]", {"x-task-id": "t", "x-task-type": "a"}, "invalid-body"),
        (b'{"task_id": "t"}', {"x-task-id": "t", "x-task-type": "a"}, "invalid-body"),
        (
            b'{"task_id": "t", "task_type": "a", "attempt": -1}',
            {"x-task-id": "t", "x-task-type": "a"},
            "invalid-body",
        ),
        (
            b'{"task_id": "other", "task_type": "a"}',
            {"x-task-id": "t", "x-task-type": "a"},
            "header-mismatch",
        ),
        (b'{"task_id": "t", "task_type": "b"}', {"x-task-id": "t", "x-task-type": "a"}, "header-mismatch"),
    ],
)
def test_decode_names_what_is_wrong(body: bytes, headers: dict[str, Any] | None, reason: str) -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode(FakeIncoming(body, headers))  # type: ignore[arg-type]
    assert info.value.reason == reason
    assert info.value.detail


def test_decode_accepts_bytes_headers() -> None:
    body = orjson.dumps({"task_id": "t", "task_type": "a"})
    msg = decode(FakeIncoming(body, {"x-task-id": b"t", "x-task-type": b"a"}))  # type: ignore[arg-type]
    assert msg.task_id == "t"
