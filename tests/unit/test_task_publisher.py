"""The task publisher's bound on publishes in flight: a channel sends one publish at a time, and a
publish's time-out runs from its call, so a large batch must not time out waiting for itself."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest

from taskplatform.errors import BrokerError
from taskplatform.messaging.publisher import TaskPublisher
from topology import build_topology

SEND_SECONDS = 0.01


class OneAtATimeExchange:
    """Like a channel: one publish on the wire at a time (a lock, as aiormq's), the time-out
    counting the wait for it, as aiormq's does. Records the most publishes called at once."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.calls = 0
        self.most_at_once = 0
        self.sent = 0

    async def publish(self, message: Any, routing_key: str, *, mandatory: bool, timeout: float) -> None:
        self.calls += 1
        self.most_at_once = max(self.most_at_once, self.calls)
        try:
            async with asyncio.timeout(timeout), self.lock:
                await asyncio.sleep(SEND_SECONDS)
                self.sent += 1
        finally:
            self.calls -= 1


class Connected:
    is_connected = True


def publisher(exchange: OneAtATimeExchange, *, max_in_flight: int, timeout: float) -> TaskPublisher:
    p = TaskPublisher(
        Connected(),  # type: ignore[arg-type]
        build_topology({"default": ["t"]}),
        timeout=timeout,
        attempts=1,
        max_in_flight=max_in_flight,
    )

    async def fixed(name: str) -> Any:
        return exchange

    p._exchange = fixed  # type: ignore[method-assign]
    return p


async def _publish_all(p: TaskPublisher, n: int) -> list[BaseException | None]:
    async def one(i: int) -> BaseException | None:
        try:
            await p.publish_raw("x", "k", aio_pika.Message(b"{}"), what=f"message {i}")
        except BrokerError as exc:
            return exc
        return None

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_a_batch_larger_than_its_time_out_allows_at_once_is_sent_in_turns_and_all_confirmed() -> None:
    exchange = OneAtATimeExchange()
    # 60 publishes of 10 ms each take 0.6 s on the channel, past a 0.25 s time-out: bounded to 3 in
    # flight, each waits at most 3 sends once its turn comes.
    p = publisher(exchange, max_in_flight=3, timeout=0.25)
    results = await _publish_all(p, 60)
    assert results == [None] * 60
    assert exchange.sent == 60 and exchange.most_at_once == 3


async def test_unbounded_the_same_batch_times_out_waiting_for_itself() -> None:
    """The failure the bound prevents (what the platform did before it)."""
    exchange = OneAtATimeExchange()
    p = publisher(exchange, max_in_flight=10_000, timeout=0.25)
    results = await _publish_all(p, 60)
    timed_out = [r for r in results if r is not None]
    assert timed_out and all("TimeoutError" in str(r) for r in timed_out)
    assert exchange.most_at_once == 60


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        TaskPublisher(Connected(), build_topology({"default": ["t"]}), max_in_flight=0)  # type: ignore[arg-type]


class StalledExchange:
    """A broker that never confirms: every publish hangs until its time-out."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, message: Any, routing_key: str, *, mandatory: bool, timeout: float) -> None:
        self.calls += 1
        async with asyncio.timeout(timeout):
            await asyncio.Event().wait()


async def test_with_the_broker_stalled_every_caller_hears_within_its_deadline_even_far_back_in_line() -> None:
    exchange = StalledExchange()
    p = TaskPublisher(
        Connected(),  # type: ignore[arg-type]
        build_topology({"default": ["t"]}),
        timeout=0.05,
        attempts=2,
        max_in_flight=2,
    )

    async def fixed(name: str) -> Any:
        return exchange

    p._exchange = fixed  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.wait_for(_publish_all(p, 200), timeout=60)
    waited = loop.time() - started
    assert all(isinstance(r, BrokerError) for r in results)
    # 200 callers, 2 slots, 2 tries of 0.05 s each: in line, the last would wait for 200 rounds of
    # tries (10 s); the deadline (2 tries and 2 s of backoff room) ends every caller's wait.
    assert exchange.calls < 200 * 2
    assert waited < p._deadline * 2
