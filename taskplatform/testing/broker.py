"""Fakes for the broker side of a worker, so its parts run in unit tests without RabbitMQ.

``FakeDelivery`` is an incoming task message (the surface of aio-pika's
``AbstractIncomingMessage`` the worker uses) that records how it was settled and, like
aio-pika, refuses a second settlement. ``FakePublisher`` records what would have been published
and can be told to fail. ``FakeBroker`` hands out a channel whose queues deliver what a test
puts in them to the consumer's callback.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.exceptions import ChannelInvalidStateError, MessageProcessError
from aiormq.exceptions import ChannelNotFoundEntity

from taskplatform.errors import BrokerError
from taskplatform.messaging.codec import encode
from taskplatform.models import BackgroundTask, TaskMessage

__all__ = ["FakeBroker", "FakeChannel", "FakeDelivery", "FakePublisher", "FakeQueue", "Published"]

_tags = itertools.count(1)


class FakeChannel:
    """The channel a delivery came on: ``close()`` it to play a lost connection."""

    def __init__(self, absent: set[str] | None = None) -> None:
        self.is_closed = False
        self.prefetch_count: int | None = None
        self.queues: dict[str, FakeQueue] = {}
        #: Queues that do not exist on the broker (shared by its channels): a passive declare
        #: of one fails as RabbitMQ's does, and closes the channel; a declare makes it.
        self.absent = absent if absent is not None else set()

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch_count = prefetch_count

    async def declare_queue(
        self,
        name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> FakeQueue:
        """The queue ``name`` (made on first declare; its arguments kept as first declared)."""
        if name in self.absent:
            if passive:
                self.is_closed = True
                raise ChannelNotFoundEntity(f"NOT_FOUND - no queue '{name}'")
            self.absent.discard(name)
        queue = self.queues.setdefault(name, FakeQueue(name, self))
        if not passive and arguments is not None and not queue.arguments:
            queue.arguments = dict(arguments)
        return queue

    async def close(self) -> None:
        self.is_closed = True


class FakeDelivery:
    """An incoming message. ``settlement`` is ``None`` until it is settled, then ``"ack"``,
    ``"requeue"`` (nack or reject with requeue) or ``"dead-letter"`` (without requeue).

    A second ack, nack or reject raises ``MessageProcessError``, as aio-pika's does; settling a
    delivery whose channel is closed raises ``ChannelInvalidStateError``.
    """

    def __init__(
        self,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        redelivered: bool = False,
        routing_key: str = "",
        channel: FakeChannel | None = None,
    ) -> None:
        self.body = body
        self.headers: dict[str, Any] = dict(headers or {})
        self.message_id = message_id
        self.redelivered = redelivered
        self.routing_key = routing_key
        self.delivery_tag = next(_tags)
        self.content_type: str | None = "application/json"
        self.correlation_id: str | None = None
        self.type: str | None = None
        self.app_id: str | None = None
        self._channel = channel or FakeChannel()
        self.settlement: str | None = None

    @classmethod
    def of(
        cls,
        message: TaskMessage | BackgroundTask,
        *,
        redelivered: bool = False,
        headers: dict[str, Any] | None = None,
        channel: FakeChannel | None = None,
    ) -> FakeDelivery:
        """The delivery of a task message (or of a task's current attempt), encoded as published."""
        tm = TaskMessage.for_task(message) if isinstance(message, BackgroundTask) else message
        encoded = encode(tm, extra_headers=headers)
        return cls(
            encoded.body,
            headers=dict(encoded.headers or {}),
            message_id=encoded.message_id,
            redelivered=redelivered,
            routing_key=tm.task_type,
            channel=channel,
        )

    @property
    def channel(self) -> FakeChannel:
        if self._channel.is_closed:
            raise ChannelInvalidStateError("channel closed")
        return self._channel

    def arrive_on(self, channel: FakeChannel) -> None:
        """Deliver this message on ``channel`` (a redelivery comes on a new one)."""
        self._channel = channel

    @property
    def processed(self) -> bool:
        return self.settlement is not None

    async def ack(self, multiple: bool = False) -> None:
        self._settle("ack")

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self._settle("requeue" if requeue else "dead-letter")

    async def reject(self, requeue: bool = False) -> None:
        self._settle("requeue" if requeue else "dead-letter")

    def _settle(self, how: str) -> None:
        if self.settlement is not None:
            raise MessageProcessError("Message already processed", self)
        if self._channel.is_closed:
            raise ChannelInvalidStateError("channel closed")
        self.settlement = how


@dataclass(frozen=True)
class Published:
    """One message the worker would have published."""

    kind: str  # "task", "not-before", "raw"
    message: TaskMessage | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    not_before: datetime | None = None
    route_priority: int | None = None
    exchange: str = ""
    routing_key: str = ""
    raw: aio_pika.Message | None = None

    @property
    def task_id(self) -> str | None:
        return self.message.task_id if self.message is not None else None


class FakePublisher:
    """Records what would be published (``published``); ``fail(...)`` makes publishes raise."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self._failure: BaseException | None = None
        self._failures_left: int | None = None

    def fail(self, error: BaseException | None = None, *, times: int | None = None) -> None:
        """Make the next ``times`` publishes (every one when None) raise ``error``."""
        self._failure = error or BrokerError("cannot publish: the broker is down (fake)")
        self._failures_left = times

    def recover(self) -> None:
        self._failure = None

    @property
    def ready(self) -> bool:
        """Like the real publisher's: False while told to fail (``fail``)."""
        return self._failure is None

    def _maybe_fail(self) -> None:
        if self._failure is None:
            return
        failure = self._failure
        if self._failures_left is not None:
            self._failures_left -= 1
            if self._failures_left <= 0:
                self._failure = None
        raise failure

    async def publish(
        self,
        message: TaskMessage,
        *,
        extra_headers: dict[str, Any] | None = None,
        route_priority: int | None = None,
    ) -> None:
        self._maybe_fail()
        self.published.append(Published("task", message, dict(extra_headers or {}), None, route_priority))

    async def publish_not_before(
        self,
        message: TaskMessage,
        not_before: datetime,
        *,
        extra_headers: dict[str, Any] | None = None,
        route_priority: int | None = None,
    ) -> None:
        self._maybe_fail()
        entry = Published("not-before", message, dict(extra_headers or {}), not_before, route_priority)
        self.published.append(entry)

    async def publish_task(self, task: BackgroundTask) -> None:
        message = TaskMessage.for_task(task)
        if task.next_attempt_at is None:
            await self.publish(message)
        else:
            await self.publish_not_before(message, task.next_attempt_at)

    async def publish_tasks(self, tasks: Sequence[BackgroundTask]) -> list[BaseException | None]:
        return [await _caught(lambda t=t: self.publish_task(t)) for t in tasks]  # type: ignore[misc]

    async def publish_many(self, messages: Sequence[TaskMessage]) -> list[BaseException | None]:
        return [await _caught(lambda m=m: self.publish(m)) for m in messages]  # type: ignore[misc]

    async def publish_raw(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, what: str
    ) -> None:
        self._maybe_fail()
        headers = dict(message.headers or {})
        self.published.append(
            Published("raw", None, headers, exchange=exchange, routing_key=routing_key, raw=message)
        )

    def count_failure(self, reason: str, n: int = 1) -> None:
        return None

    async def close(self) -> None:
        return None


async def _caught(publish: Callable[[], Awaitable[None]]) -> BaseException | None:
    try:
        await publish()
    except Exception as exc:
        return exc
    return None


class FakeQueue:
    """A queue on a ``FakeChannel``: ``deliver`` hands a delivery to its consumer's callback."""

    def __init__(self, name: str, channel: FakeChannel) -> None:
        self.name = name
        self.channel = channel
        self._callbacks: dict[str, Callable[[Any], Awaitable[None]]] = {}
        self.arguments: dict[str, Any] = {}
        #: (exchange, routing key) of every binding made.
        self.bindings: list[tuple[str, str]] = []

    async def bind(self, exchange: str, routing_key: str = "") -> None:
        self.bindings.append((exchange, routing_key))

    async def consume(
        self,
        callback: Callable[[Any], Awaitable[None]],
        no_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        tag = f"ctag-{self.name}-{len(self._callbacks)}"
        self._callbacks[tag] = callback
        return tag

    async def cancel(self, tag: str) -> None:
        self._callbacks.pop(tag, None)

    @property
    def consumed(self) -> bool:
        return bool(self._callbacks)

    async def deliver(self, delivery: FakeDelivery) -> None:
        """Hand ``delivery`` to the (first) consumer, on this queue's channel, as the broker would."""
        delivery.arrive_on(self.channel)
        callback = next(iter(self._callbacks.values()))
        await callback(delivery)


class FakeBroker:
    """The consumer's broker connection: ``channel()`` opens a ``FakeChannel``."""

    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []
        #: Queues that do not exist (see ``FakeChannel.absent``).
        self.absent: set[str] = set()

    async def channel(self) -> FakeChannel:
        channel = FakeChannel(self.absent)
        self.channels.append(channel)
        return channel

    def queue(self, name: str) -> FakeQueue:
        """The queue named ``name`` on the last channel opened that consumes it, else on the
        last that has it (a passive declare on a channel of its own only looked)."""
        having = [c.queues[name] for c in reversed(self.channels) if name in c.queues]
        if not having:
            raise KeyError(name)
        return next((q for q in having if q.consumed), having[0])
