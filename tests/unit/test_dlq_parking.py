"""Parking and unparking dead messages without a broker: the copies (what they keep, add and drop)
and ``move_parked`` over a fake connection (how many it moves, what a failed publish leaves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from taskplatform.deadletters.parking import (
    HEADER_PARKED_AT,
    HEADER_PARKED_ATTEMPTS,
    HEADER_PARKED_DETAIL,
    HEADER_PARKED_REASON,
    MAX_PARKED_DETAIL,
    move_parked,
    parked_copy,
    returned_copy,
    unparked_copy,
)
from taskplatform.errors import BrokerError
from taskplatform.testing.broker import FakeDelivery

PARKING = "tasks.dlq.parking"
DLQ = "tasks.dlq.queue"


class Dead(FakeDelivery):
    """A dead message with every property a copy takes over."""

    def __init__(self, body: bytes = b'{"task_id": "t-1"}', **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.content_encoding: str | None = "utf-8"
        self.priority: int | None = 3
        self.reply_to: str | None = None
        self.timestamp = datetime(2026, 1, 2, tzinfo=UTC)
        self.correlation_id = "corr-1"
        self.type = "task"
        self.app_id = "taskplatform"
        self.expiration = 5000
        self.user_id = "guest"


def test_a_parked_copy_keeps_the_message_and_says_why_it_is_parked() -> None:
    message = Dead(headers={"x-death": [{"count": 1}], "x-dead-reason": "max_retries"}, message_id="m-1")
    copy = parked_copy(message, reason="store-refused", detail="x" * (MAX_PARKED_DETAIL + 50), attempts=5)  # type: ignore[arg-type]

    assert copy.body == message.body and copy.message_id == "m-1" and copy.priority == 3
    assert copy.correlation_id == "corr-1" and copy.content_encoding == "utf-8"
    assert copy.delivery_mode is aio_pika.DeliveryMode.PERSISTENT
    assert copy.expiration is None and copy.user_id is None  # a parked copy must not expire
    headers = dict(copy.headers or {})
    assert headers["x-death"] == [{"count": 1}] and headers["x-dead-reason"] == "max_retries"
    assert headers[HEADER_PARKED_REASON] == "store-refused" and headers[HEADER_PARKED_ATTEMPTS] == 5
    assert len(str(headers[HEADER_PARKED_DETAIL])) == MAX_PARKED_DETAIL
    assert isinstance(headers[HEADER_PARKED_AT], int)


def test_an_unparked_copy_is_the_message_as_it_was_before_parking() -> None:
    original = Dead(headers={"x-dead-reason": "max_retries"})
    parked = parked_copy(original, reason="capture-failed", detail="boom", attempts=1)  # type: ignore[arg-type]
    redelivered = Dead(headers=dict(parked.headers or {}))

    unparked = unparked_copy(redelivered)  # type: ignore[arg-type]

    assert dict(unparked.headers or {}) == {"x-dead-reason": "max_retries"}


def test_a_returned_copy_drops_the_quorum_queues_delivery_count() -> None:
    message = Dead(headers={"x-delivery-count": 7, "x-dead-reason": "max_retries"})
    assert dict(returned_copy(message).headers or {}) == {"x-dead-reason": "max_retries"}  # type: ignore[arg-type]
    assert dict(returned_copy(Dead()).headers or {}) == {}  # type: ignore[arg-type]


@dataclass
class _Declared:
    message_count: int | None


@dataclass
class ParkingQueue:
    messages: list[Dead]
    declared_count: int | None = -1  # -1: as many as it holds

    @property
    def declaration_result(self) -> _Declared:
        return _Declared(len(self.messages) if self.declared_count == -1 else self.declared_count)

    async def get(self, *, no_ack: bool, fail: bool) -> Dead | None:
        assert not no_ack and not fail
        return self.messages.pop(0) if self.messages else None


@dataclass
class Exchange:
    fail_on: int | None = None  # the publish number (1-based) that fails
    published: list[tuple[str, aio_pika.Message]] = field(default_factory=list)

    async def publish(self, message: aio_pika.Message, *, routing_key: str, mandatory: bool) -> None:
        assert mandatory
        if self.fail_on == len(self.published) + 1:
            raise BrokerError("message returned: no route (fake)")
        self.published.append((routing_key, message))


class Channel:
    def __init__(self, queue: ParkingQueue, exchange: Exchange, *, close_fails: bool = False) -> None:
        self.queue = queue
        self.default_exchange = exchange
        self.closed = False
        self.close_fails = close_fails
        self.confirms: bool | None = None

    async def declare_queue(self, name: str, *, passive: bool) -> ParkingQueue:
        assert name == PARKING and passive
        return self.queue

    async def close(self) -> None:
        self.closed = True
        if self.close_fails:
            raise RuntimeError("connection already gone")


class Connection:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def channel(self, *, publisher_confirms: bool) -> Channel:
        self._channel.confirms = publisher_confirms
        return self._channel


def _parked(n: int) -> list[Dead]:
    return [
        Dead(headers={HEADER_PARKED_REASON: "store-refused", "x-dead-reason": "r"}, message_id=f"m-{i}")
        for i in range(n)
    ]


async def test_unpark_moves_every_parked_message_back_to_the_dlq_each_confirmed_then_acked() -> None:
    messages = _parked(3)
    channel = Channel(ParkingQueue(list(messages)), Exchange())

    assert await move_parked(Connection(channel), PARKING, DLQ) == 3  # type: ignore[arg-type]

    assert channel.confirms is True and channel.closed
    assert [key for key, _ in channel.default_exchange.published] == [DLQ] * 3
    assert [dict(m.headers or {}) for _, m in channel.default_exchange.published] == [
        {"x-dead-reason": "r"}
    ] * 3
    assert [m.settlement for m in messages] == ["ack"] * 3


async def test_unpark_moves_at_most_the_limit() -> None:
    messages = _parked(3)
    channel = Channel(ParkingQueue(list(messages)), Exchange())

    assert await move_parked(Connection(channel), PARKING, DLQ, limit=2) == 2  # type: ignore[arg-type]

    assert [m.settlement for m in messages] == ["ack", "ack", None]


async def test_unpark_never_moves_more_than_the_queue_held_when_it_started() -> None:
    messages = _parked(3)  # one was parked again after the count was taken
    channel = Channel(ParkingQueue(list(messages), declared_count=2), Exchange())

    assert await move_parked(Connection(channel), PARKING, DLQ, limit=10) == 2  # type: ignore[arg-type]

    assert messages[2].settlement is None


async def test_unpark_stops_when_the_queue_runs_dry_before_its_count() -> None:
    messages = _parked(1)  # another consumer took the second meanwhile
    channel = Channel(ParkingQueue(list(messages), declared_count=2), Exchange(), close_fails=True)

    assert await move_parked(Connection(channel), PARKING, DLQ) == 1  # type: ignore[arg-type]
    assert channel.closed  # a failing close is not the caller's problem


async def test_a_message_that_cannot_be_moved_back_stays_parked_and_the_error_is_raised() -> None:
    messages = _parked(3)
    channel = Channel(ParkingQueue(list(messages)), Exchange(fail_on=2))

    with pytest.raises(BrokerError, match="no route"):
        await move_parked(Connection(channel), PARKING, DLQ)  # type: ignore[arg-type]

    assert [m.settlement for m in messages] == ["ack", "requeue", None]
    assert channel.closed


async def test_a_queue_that_reports_no_count_moves_nothing() -> None:
    messages = _parked(1)
    channel = Channel(ParkingQueue(list(messages), declared_count=None), Exchange())
    assert await move_parked(Connection(channel), PARKING, DLQ) == 0  # type: ignore[arg-type]
    assert messages[0].settlement is None and channel.closed
