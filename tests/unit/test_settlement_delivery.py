"""Settlement without a broker: store retries that really retry, deliveries whose channel is gone,
and the headers of a message waiting for another worker's lease."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.exceptions import ChannelInvalidStateError

from taskplatform.errors import StoreError, StoreRefused
from taskplatform.events.bus import Delivery
from taskplatform.events.models import TaskStarted
from taskplatform.models.message import HEADER_AWAIT_OWNER, HEADER_AWAIT_SINCE, AwaitOwner
from taskplatform.retry import retry_store_call
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.recording import EventRecorder
from taskplatform.worker.settlement import Settler, channel_gone


class FlakyBus:
    """A bus whose publish fails with StoreError ``failures`` times, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def publish(self, event: Any, task: Any = None) -> Delivery:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError(f"store unreachable (call {self.calls})")
        return Delivery(event, task)


class FakeChannel:
    def __init__(self, closed: bool = False) -> None:
        self.is_closed = closed


class FakeDelivery:
    """An incoming message: records what it was told; its channel may be closed or vanish."""

    def __init__(self, *, closed: bool = False, vanishes_on_ack: bool = False) -> None:
        self._channel = FakeChannel(closed)
        self.vanishes_on_ack = vanishes_on_ack
        self.message_id = "m1"
        self.told: list[str] = []

    @property
    def channel(self) -> FakeChannel:
        if self._channel.is_closed:
            raise ChannelInvalidStateError("channel closed")
        return self._channel

    async def ack(self) -> None:
        if self.vanishes_on_ack:
            self._channel.is_closed = True
            raise ChannelInvalidStateError("channel closed while acking")
        self.told.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.told.append("requeue" if requeue else "reject")


class Unreachable:
    """A store that does not answer a ping: failed writes are an outage, not a refusal."""

    async def answers(self) -> bool:
        return False


def _settler(bus: Any, hold: float = 5.0) -> Settler:
    recorder = EventRecorder(Unreachable(), bus, node_id="n1", store_hold=hold)  # type: ignore[arg-type]
    return Settler(recorder, None, WorkerConfig(node_id="n1", dead_letter_exchange="dlx"))  # type: ignore[arg-type]


def _event() -> TaskStarted:
    return TaskStarted(task_id="t1", task_type="test_noop", attempt=0, node_id="n1")


async def test_a_store_write_that_fails_twice_is_retried_and_returns_its_real_result() -> None:
    bus = FlakyBus(failures=2)
    delivery = await _settler(bus).recorder.record(_event(), None)
    # The result is the awaited Delivery, not a coroutine handed back by a retry that never ran.
    assert isinstance(delivery, Delivery) and delivery.accepted
    assert bus.calls == 3


async def test_a_store_write_that_keeps_failing_raises_after_the_hold() -> None:
    bus = FlakyBus(failures=10_000)
    started = time.monotonic()
    with pytest.raises(StoreError):
        await _settler(bus, hold=0.5).recorder.record(_event(), None)
    assert 3 <= bus.calls < 50  # retried with backoff, and stopped
    assert time.monotonic() - started < 5


async def test_retry_store_call_awaits_a_lambda_returning_a_coroutine() -> None:
    calls: list[int] = []

    async def write() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StoreError("down")
        return "stored"

    assert await retry_store_call(lambda: write(), hold=5.0, first_wait=0.01) == "stored"
    assert len(calls) == 3


async def test_retry_store_call_does_not_retry_other_errors() -> None:
    calls: list[int] = []

    async def write() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await retry_store_call(write, hold=5.0, first_wait=0.01)
    assert calls == [1]


async def test_acking_a_delivery_whose_channel_is_gone_reports_it_and_does_not_raise() -> None:
    settler = _settler(FlakyBus(0))
    live, closed, vanishing = FakeDelivery(), FakeDelivery(closed=True), FakeDelivery(vanishes_on_ack=True)
    assert await settler.ack(live) is True and live.told == ["ack"]  # type: ignore[arg-type]
    assert await settler.ack(closed) is False and closed.told == []  # type: ignore[arg-type]
    assert await settler.to_dead_letter_queue(closed) is False  # type: ignore[arg-type]
    assert await settler.requeue(closed) is False and closed.told == []  # type: ignore[arg-type]
    assert await settler.ack(vanishing) is False  # type: ignore[arg-type]
    assert channel_gone(closed) and channel_gone(vanishing) and not channel_gone(live)  # type: ignore[arg-type]
    assert await settler.to_dead_letter_queue(live) is True and live.told == ["ack", "reject"]  # type: ignore[arg-type]


def test_await_owner_headers_round_trip_and_unreadable_values_are_ignored() -> None:
    wait = AwaitOwner("node-a", datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    assert AwaitOwner.from_headers(wait.headers()) == wait
    assert AwaitOwner.from_headers({HEADER_AWAIT_OWNER: b"node-b", HEADER_AWAIT_SINCE: 0}) == AwaitOwner(
        "node-b", datetime(1970, 1, 1, tzinfo=UTC)
    )
    for bad in (
        None,
        {},
        {HEADER_AWAIT_OWNER: "n"},  # no start
        {HEADER_AWAIT_OWNER: "n", HEADER_AWAIT_SINCE: "yesterday"},
        {HEADER_AWAIT_OWNER: "n", HEADER_AWAIT_SINCE: True},
        {HEADER_AWAIT_OWNER: 7, HEADER_AWAIT_SINCE: 1},
        {HEADER_AWAIT_OWNER: "n", HEADER_AWAIT_SINCE: 10**30},  # out of range
    ):
        assert AwaitOwner.from_headers(bad) is None


async def test_a_write_refused_while_the_store_answers_is_given_up_after_three_refusals() -> None:
    calls: list[int] = []

    async def write() -> None:
        calls.append(1)
        raise StoreError("value refused")

    async def answers() -> bool:
        return True

    started = time.monotonic()
    with pytest.raises(StoreRefused, match="refused the write 3 times"):
        await retry_store_call(write, hold=300.0, answers=answers, first_wait=0.01)
    assert len(calls) == 3 and time.monotonic() - started < 5  # not the 300 s hold


async def test_a_write_failing_while_the_store_is_unreachable_waits_out_the_hold() -> None:
    calls: list[int] = []

    async def write() -> None:
        calls.append(1)
        raise StoreError("connection refused")

    async def answers() -> bool:
        return False  # an outage: failures are not refusals

    with pytest.raises(StoreError) as raised:
        await retry_store_call(write, hold=0.5, answers=answers, first_wait=0.01, max_wait=0.05)
    assert not isinstance(raised.value, StoreRefused) and len(calls) > 3
