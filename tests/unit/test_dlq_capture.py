"""Turning what the broker hands over into a dead-letter record, without a broker: header values
made JSON-safe, text and integers taken defensively from malformed headers, ``x-death`` entries
that are not what RabbitMQ writes, record ids, and which reason and error a record shows."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from taskplatform.deadletters.capture import (
    MAX_ID_LENGTH,
    dead_letter_from,
    dead_letter_of_task,
    deaths,
    json_safe,
    record_id,
    text_of,
)
from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus
from taskplatform.models.message import HEADER_DEAD_AT, HEADER_DEAD_DETAIL, HEADER_DEAD_REASON
from taskplatform.testing.broker import FakeDelivery


class Dead(FakeDelivery):
    """A message from the DLQ, with the properties capture reads."""

    def __init__(self, body: bytes, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.exchange = "tasks.exchange"
        self.content_encoding: str | None = None
        self.priority: int | None = None
        self.timestamp: datetime | None = None
        self.delivery_mode: int | None = None
        self.reply_to: str | None = None


def _b64(raw: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(raw).decode()}


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        (b"plain", "plain"),
        (bytearray(b"plain"), "plain"),
        (b"\xff\xfe not utf-8", _b64(b"\xff\xfe not utf-8")),
        (b"nul\x00inside", _b64(b"nul\x00inside")),
        ("nul\x00inside", _b64(b"nul\x00inside")),
        ("lone \udc80 surrogate", _b64("lone \udc80 surrogate".encode("utf-8", "surrogatepass"))),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05+00:00"),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00"),
        (Decimal("1.5"), 1.5),
        ({"k\x00": [1, (True, None)]}, {"k\\u0000": [1, [True, None]]}),
        (object.__new__(type("Odd", (), {"__str__": lambda self: "odd\x00"})), "odd\\u0000"),
    ],
    ids=[
        "bytes",
        "bytearray",
        "not-utf8",
        "bytes-nul",
        "str-nul",
        "surrogate",
        "naive-time",
        "aware-time",
        "decimal",
        "nested",
        "other",
    ],
)
def test_header_values_become_json_every_store_keeps_exactly(value: object, safe: object) -> None:
    assert json_safe(value) == safe


def test_text_of_takes_text_and_bytes_and_nothing_else() -> None:
    assert text_of(b"caf\xc3\xa9") == "café"
    assert text_of(b"bad \xff") == "bad \\xff"
    assert text_of("nul\x00") == "nul\\u0000"
    assert text_of("") is None and text_of(7) is None and text_of(None) is None


def test_malformed_x_death_entries_are_skipped_or_defaulted() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    entries = deaths(
        {
            "x-death": [
                "not a table",
                {"count": "many", "time": naive, "routing-keys": "not-a-list"},
                {"reason": b"rejected", "queue": "q", "count": 2**40, "routing-keys": [b"k", 5]},
            ]
        }
    )
    assert [e.reason for e in entries] == ["unknown", "rejected"]
    assert (
        entries[0].count == 1
        and entries[0].time == naive.replace(tzinfo=UTC)
        and entries[0].routing_keys == []
    )
    assert entries[1].count == 2**31 - 1 and entries[1].routing_keys == ["k", ""] and entries[1].time is None
    assert deaths({"x-death": "text"}) == [] and deaths({}) == []


@pytest.mark.parametrize("at", ["soon", True, None])
def test_a_platform_death_with_an_unreadable_time_has_none(at: object) -> None:
    message = Dead(b"{}", headers={HEADER_DEAD_REASON: "bad-json", HEADER_DEAD_AT: at}, routing_key="rk")
    record = dead_letter_from(message, None)  # type: ignore[arg-type]
    [death] = record.x_death
    assert death.source == "platform" and death.reason == "bad-json" and death.time is None
    assert death.routing_keys == ["rk"]


def test_a_platform_death_records_its_time_and_no_routing_key_when_there_is_none() -> None:
    message = Dead(b"{}", headers={HEADER_DEAD_REASON: "bad-json", HEADER_DEAD_AT: 1_767_225_600_000})
    [death] = dead_letter_from(message, None).x_death  # type: ignore[arg-type]
    assert death.time == datetime(2026, 1, 1, tzinfo=UTC) and death.routing_keys == []


def test_a_task_id_too_long_or_unclean_for_a_record_id_is_hashed() -> None:
    assert record_id("t-1", b"", {}, "") == "t-1"
    for bad in ("x" * (MAX_ID_LENGTH + 1), "nul\x00id"):
        hashed = record_id(bad, b"body", {"x-death": [1]}, "rk")
        assert hashed.startswith("msg-") and len(hashed) == 44
        # the volatile headers do not change it: a redelivery finds the same record
        assert record_id(bad, b"body", {"x-death": [2], "x-delivery-count": 3}, "rk") == hashed
    assert record_id("t-1", b"body", {}, "rk", own=False).startswith("msg-")


def test_a_malformed_message_dying_again_finds_its_record_and_two_publications_keep_one_each() -> None:
    """The worker stamps each death with its own time and detail: one message redelivered and
    dead-lettered twice is one record; the same bytes published twice (two message ids) are two."""

    def death(message_id: str | None, at: int, detail: str) -> str:
        headers = {
            "x-task-id": "half",
            HEADER_DEAD_REASON: "bad-json",
            HEADER_DEAD_AT: at,
            HEADER_DEAD_DETAIL: detail,
        }
        return dead_letter_from(
            Dead(b'{"task_id": "half', headers=headers, message_id=message_id, routing_key="rk"), None
        ).id

    first = death("m-1", 1_767_225_600_000, "Expecting value: line 1 column 1")
    assert first.startswith("msg-")
    assert death("m-1", 1_767_225_600_007, "Expecting value at char 0") == first
    assert death("m-2", 1_767_225_600_000, "Expecting value: line 1 column 1") != first
    assert death(None, 1_767_225_600_000, "x") == death(None, 1_767_225_600_009, "y") != first
    # what the message carries still tells records apart
    other = Dead(b'{"task_id": "half', headers={"x-task-id": "other"}, message_id="m-1", routing_key="rk")
    assert dead_letter_from(other, None).id != first


def test_the_record_of_a_task_that_died_without_its_message() -> None:
    task = BackgroundTask(task_type="generate_summary", retry_count=2, replays=1, user_id="alice")
    error = ErrorInfo(type="WorkerLost", message="gone", attempt=2, reason="attempts-exhausted")

    record = dead_letter_of_task(task, reason="attempts-exhausted", error=error)

    assert record.id == task.id and record.kind == "task" and record.task_id == task.id
    assert record.attempt == 2 and record.generation == 1 and record.user_id == "alice"
    assert record.error_info == error and not record.body_truncated
    assert [(d.source, d.reason) for d in record.x_death] == [("platform", "attempts-exhausted")]


def test_a_dead_reason_matching_the_tasks_error_shows_the_tasks_error() -> None:
    error = ErrorInfo(type="ValueError", message="bad input", attempt=0, reason="permanent-failure")
    task = BackgroundTask(task_type="generate_summary", status=TaskStatus.FAILED, error_info=error)
    message = FakeDelivery.of(
        task, headers={HEADER_DEAD_REASON: "permanent-failure", HEADER_DEAD_DETAIL: "x"}
    )
    dead = Dead(message.body, headers=message.headers, message_id=message.message_id)

    record = dead_letter_from(dead, task)  # type: ignore[arg-type]

    assert record.reason == "permanent-failure" and record.error_info == error


def test_a_dead_reason_unlike_the_tasks_shows_the_platforms_detail() -> None:
    error = ErrorInfo(type="ValueError", message="bad input", attempt=0, reason="permanent-failure")
    task = BackgroundTask(task_type="generate_summary", status=TaskStatus.FAILED, error_info=error)
    message = FakeDelivery.of(
        task, headers={HEADER_DEAD_REASON: "header-mismatch", HEADER_DEAD_DETAIL: "why"}
    )
    dead = Dead(message.body, headers=message.headers, message_id=message.message_id)

    record = dead_letter_from(dead, task)  # type: ignore[arg-type]

    assert record.reason == "header-mismatch"
    assert record.error_info is not None and record.error_info.type == "DeadLetter"
    assert record.error_info.message == "why"


def test_without_a_dead_reason_the_tasks_own_reason_and_error_are_shown() -> None:
    error = ErrorInfo(type="ValueError", message="bad input", attempt=0, reason="non-retryable")
    task = BackgroundTask(task_type="generate_summary", status=TaskStatus.FAILED, error_info=error)
    message = FakeDelivery.of(task)
    dead = Dead(message.body, headers={**message.headers, "x-death": [{"reason": "rejected"}]})

    record = dead_letter_from(dead, task)  # type: ignore[arg-type]

    assert record.reason == "non-retryable" and record.error_info == error


def test_a_task_error_without_a_reason_is_shown_under_the_brokers_reason() -> None:
    error = ErrorInfo(type="ValueError", message="bad input", attempt=0)
    task = BackgroundTask(task_type="generate_summary", status=TaskStatus.FAILED, error_info=error)
    message = FakeDelivery.of(task)
    dead = Dead(message.body, headers={**message.headers, "x-death": [{"reason": "delivery_limit"}]})

    record = dead_letter_from(dead, task)  # type: ignore[arg-type]

    assert record.reason == "delivery_limit" and record.error_info == error


def test_a_message_with_no_reason_at_all_is_unknown() -> None:
    record = dead_letter_from(Dead(b"not json"), None)  # type: ignore[arg-type]
    assert record.kind == "message" and record.reason == "unknown" and record.x_death == []
    assert record.error_info is not None and "(unknown)" in record.error_info.message


def test_copies_of_a_message_published_without_an_id_share_one_so_its_deaths_share_a_record() -> None:
    """The client library mints a random id for a message published without one: every platform
    copy (dead-letter, returned, parked) carries one made from the message instead."""
    from taskplatform.deadletters.parking import parked_copy, returned_copy
    from taskplatform.worker.delivery import dead_letter_copy

    original = Dead(b'{"task_id": "half', headers={"x-task-id": "half"}, routing_key="rk")
    first = dead_letter_copy(original, "bad-json", "Expecting value")
    second = dead_letter_copy(original, "bad-json", "Expecting value at char 0")
    assert first.message_id == second.message_id and str(first.message_id).startswith("copy-")
    assert returned_copy(original).message_id == first.message_id
    assert parked_copy(original, reason="r", detail="d", attempts=1).message_id == first.message_id

    def captured(copy: Any) -> str:
        delivered = Dead(copy.body, headers=dict(copy.headers), message_id=copy.message_id, routing_key="rk")
        return dead_letter_from(delivered, None).id

    assert captured(first) == captured(second)
    # another message (other bytes or routing key) gets another id; a message's own id is kept
    assert dead_letter_copy(Dead(b"{}", routing_key="rk"), "bad-json", "").message_id != first.message_id
    assert dead_letter_copy(Dead(original.body, routing_key="rk2"), "x", "").message_id != first.message_id
    assert dead_letter_copy(Dead(b"{}", message_id="m-1"), "bad-json", "").message_id == "m-1"
