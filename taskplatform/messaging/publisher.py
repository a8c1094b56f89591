"""Publishing with publisher confirms, mandatory routing and retries of transient faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.exceptions import DeliveryError, PublishError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from taskplatform.errors import TRANSIENT_BROKER_ERRORS, BrokerError, UnroutableError
from taskplatform.messaging.codec import encode
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.metrics.registry import Metrics
from taskplatform.models import BackgroundTask, utcnow
from taskplatform.models.message import HEADER_DELAY, HEADER_NOT_BEFORE, TaskMessage
from taskplatform.models.target import SelectorAnnouncement
from topology.spec import Topology, selector_id

#: How often a process announces a selector it routes to again (the stream keeps a week).
SELECTOR_ANNOUNCE_EVERY = 24 * 3600.0

log = logging.getLogger(__name__)

#: What a publish may raise when the broker goes away; RuntimeError is aiormq's
#: "Connection closed" for a socket lost mid-publish.
_PUBLISH_FAULTS: tuple[type[BaseException], ...] = (*TRANSIENT_BROKER_ERRORS, RuntimeError)


class MessagePublisher(Protocol):
    """What a submitter needs of a publisher (``TaskPublisher``, or a fake in tests)."""

    @property
    def ready(self) -> bool:
        """Whether a publish can be tried now (connected, topology declared)."""
        ...

    async def publish_many(self, messages: Sequence[TaskMessage]) -> list[BaseException | None]:
        """Publish with confirms; per message, None or the error."""
        ...

    def count_failure(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages that could not be published for ``reason``."""
        ...


class TaskPublisher:
    """Publishes task messages to the work exchange.

    Every publish waits for the broker's confirm; ``mandatory=True`` makes an unroutable
    message an ``UnroutableError`` instead of a silent drop. At most ``max_in_flight`` publishes
    are sent and unconfirmed at once; the rest wait before their time-out starts. Transient
    faults (connection or channel lost, confirm timeout) are retried with exponential backoff;
    anything still failing raises ``BrokerError`` and the caller leaves the task in the outbox.
    """

    def __init__(
        self,
        broker: BrokerConnection,
        topology: Topology,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        max_in_flight: int = 128,
        metrics: Metrics | None = None,
        route_queue_expires: float = 7 * 24 * 3600.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._broker = broker
        self._metrics = metrics
        self._topology = topology
        self._timeout = timeout
        self._attempts = attempts
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()
        #: Publishes sent and not yet confirmed. A channel sends one publish at a time, and a
        #: publish's time-out runs from its call: thousands queued on the channel at once would time
        #: out waiting for each other, however fast the broker confirms.
        self._slots = asyncio.Semaphore(max_in_flight)
        #: The longest a publish may take in all: each try's time-out, plus the backoffs.
        self._deadline = timeout * attempts + attempts * 1.0

        self._topology_ready = False
        #: Selectors of ``mode: any`` tasks this process made routable, and when it announced them.
        self._selectors: dict[str, float] = {}
        self._selector_lock = asyncio.Lock()
        self._route_queue_expires = route_queue_expires

    @property
    def ready(self) -> bool:
        """Connected, and the topology has been declared (set by :meth:`mark_topology_ready`)."""
        return self._topology_ready and self._broker.is_connected

    def mark_topology_ready(self) -> None:
        """Called once the topology exists on the broker; publishing is pointless before."""
        self._topology_ready = True

    async def _exchange(self, name: str) -> AbstractExchange:
        if self._channel is None or self._channel.is_closed:
            async with self._lock:
                if self._channel is None or self._channel.is_closed:
                    self._channel = await self._broker.channel(publisher_confirms=True, on_return_raises=True)
                    self._exchanges.clear()
        exchange = self._exchanges.get(name)
        if exchange is None:
            assert self._channel is not None
            if name == "":
                exchange = self._channel.default_exchange
            else:
                exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(
        self,
        message: TaskMessage,
        *,
        extra_headers: dict[str, Any] | None = None,
        route_priority: int | None = None,
    ) -> None:
        """Publish ``message`` to the work exchange, routed by its task type and priority
        (``route_priority``, when given, picks the priority level's queue instead: the body
        keeps the task's own priority); a message aimed at a node goes to that node's queue."""
        priority = message.priority if route_priority is None else route_priority
        target = message.target
        labels = (target.labels or {}) if target is not None and target.node is None else None
        if labels is not None:
            await self.ensure_selector(message.task_type, labels)
        route = (
            message.target_route
            if message.target_route is not None
            else self._topology.routing_key_for(message.task_type, priority)
        )
        body = encode(message, extra_headers=extra_headers)
        selector = selector_id(message.task_type, labels) if labels is not None else None
        made = self._selectors.get(selector) if selector is not None else None
        try:
            await self.publish_raw(self._topology.work_exchange, route, body, what=f"task {message.task_id}")
        except UnroutableError:
            if labels is None or selector is None:
                raise
            # The selector's queue is gone although this process made it (an operator deleted
            # it, or it expired unconsumed): make it again and announce it (its workers consume
            # it again), then publish once more. Of publishes failing together, the first
            # makes it again; the others find it made since they read it.
            async with self._selector_lock:
                if self._selectors.get(selector) == made:
                    log.warning("the queue of selector %s is gone; declaring it again", selector)
                    self._selectors.pop(selector, None)
            await self.ensure_selector(message.task_type, labels)
            await self.publish_raw(self._topology.work_exchange, route, body, what=f"task {message.task_id}")

    async def publish_task(self, task: BackgroundTask) -> None:
        """Publish ``task``'s current attempt: at once, or through the delay path when its
        ``next_attempt_at`` lies ahead (a retry)."""
        message = TaskMessage.for_task(task)
        if task.next_attempt_at is None:
            await self.publish(message)
        else:
            await self.publish_not_before(message, task.next_attempt_at)

    async def publish_not_before(
        self,
        message: TaskMessage,
        not_before: datetime,
        *,
        extra_headers: dict[str, Any] | None = None,
        route_priority: int | None = None,
    ) -> None:
        """Publish so that the message reaches a worker no earlier than ``not_before``.

        The message carries ``x-not-before`` (epoch ms), ``x-delay`` (ms left) and
        ``x-retry-count``; it waits in the delay path (a TTL tier, or the delayed-message
        exchange) and a worker receiving it early sends it round again with what is left.
        """
        remaining = (not_before - utcnow()).total_seconds()
        priority = message.priority if route_priority is None else route_priority
        if message.target is not None and message.target.node is None:
            await self.ensure_selector(message.task_type, message.target.labels or {})
        hop = self._topology.delay_hop(message.task_type, remaining, priority, route=message.target_route)
        if hop is None:
            await self.publish(
                message,
                extra_headers={**(extra_headers or {}), HEADER_NOT_BEFORE: _epoch_ms(not_before)},
                route_priority=route_priority,
            )
            return
        headers: dict[str, Any] = {
            **(extra_headers or {}),
            **hop.headers,
            HEADER_NOT_BEFORE: _epoch_ms(not_before),
            HEADER_DELAY: max(0, int(remaining * 1000)),
        }
        await self.publish_raw(
            hop.exchange,
            hop.routing_key,
            encode(message, extra_headers=headers),
            what=f"delayed task {message.task_id}",
        )

    async def ensure_selector(self, task_type: str, labels: Mapping[str, str]) -> str:
        """Make "any worker serving ``task_type`` with ``labels``" routable: its queue declared
        and bound, and announced on the selectors stream, which every worker reads from its
        start (a worker with the labels then consumes the queue). Once per process and
        ``SELECTOR_ANNOUNCE_EVERY`` seconds per selector (the stream keeps a week). Returns its id.
        """
        selector = selector_id(task_type, labels)
        fresh = self._selectors.get(selector)
        if fresh is not None and time.monotonic() - fresh < SELECTOR_ANNOUNCE_EVERY:
            return selector
        async with self._selector_lock:
            fresh = self._selectors.get(selector)
            if fresh is not None and time.monotonic() - fresh < SELECTOR_ANNOUNCE_EVERY:
                return selector
            if not self._broker.is_connected:
                raise BrokerError(f"cannot route tasks for selector {selector}: not connected to RabbitMQ")
            spec = self._topology.selector_queue(selector, expires_seconds=self._route_queue_expires)
            try:
                channel = await self._broker.channel()
                try:
                    queue = await channel.declare_queue(
                        spec.name, durable=True, arguments=dict(spec.arguments)
                    )
                    consumers = queue.declaration_result.consumer_count
                    for binding in self._topology.selector_bindings(selector):
                        await queue.bind(binding.exchange, routing_key=binding.routing_key)
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
            except TRANSIENT_BROKER_ERRORS as exc:
                raise BrokerError(f"cannot declare the queue of selector {selector}: {exc}") from exc
            announcement = SelectorAnnouncement(
                selector=selector, task_type=task_type, labels=dict(labels), consumers=consumers
            )
            await self.publish_raw(
                "",
                self._topology.selectors_stream,
                aio_pika.Message(
                    announcement.model_dump_json().encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                what=f"the announcement of selector {selector}",
            )
            self._selectors[selector] = time.monotonic()
            log.info("selector %s (%s with %s) announced to the workers", selector, task_type, labels)
            return selector

    async def publish_tasks(self, tasks: Sequence[BackgroundTask]) -> list[BaseException | None]:
        """``publish_task`` for each, concurrently; per task, None or the error."""
        results = await asyncio.gather(*(self.publish_task(t) for t in tasks), return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
        return [r if isinstance(r, BaseException) else None for r in results]

    async def publish_many(self, messages: Sequence[TaskMessage]) -> list[BaseException | None]:
        """Publish concurrently (confirms pipelined); per message, None or the error."""
        results = await asyncio.gather(*(self.publish(m) for m in messages), return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
        return [r if isinstance(r, BaseException) else None for r in results]

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        *,
        what: str,
        mandatory: bool = True,
    ) -> None:
        """Publish an already-built message with confirms and retries; with ``mandatory`` (the
        default, for task messages) a message no queue takes is an UnroutableError."""
        if not self._broker.is_connected:
            self.count_failure("not_connected")
            raise BrokerError(f"cannot publish {what}: not connected to RabbitMQ")

        async def publish_once() -> None:
            async with self._slots:  # the time-out starts once this publish is one of the few sent
                target = await self._exchange(exchange)
                await target.publish(
                    message, routing_key=routing_key, mandatory=mandatory, timeout=self._timeout
                )

        try:
            # One deadline over every try and every wait for a slot: a caller hears within it
            # (and its task goes to the outbox), whatever the broker or the queue for slots does.
            async with asyncio.timeout(self._deadline):
                try:
                    await publish_once()  # the hot path: no retry controller unless it fails
                except TRANSIENT_BROKER_ERRORS:
                    if self._attempts <= 1:
                        raise
                    retrying = AsyncRetrying(
                        stop=stop_after_attempt(self._attempts - 1),
                        wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
                        retry=retry_if_exception_type(TRANSIENT_BROKER_ERRORS),
                        reraise=True,
                    )
                    await retrying(publish_once)
        except PublishError as exc:
            self.count_failure("unroutable")
            raise UnroutableError(
                f"{what} is unroutable: no queue is bound to exchange {exchange!r} "
                f"with routing key {routing_key!r}; declare the topology for this task type"
            ) from exc
        except DeliveryError as exc:
            self.count_failure("refused")
            raise BrokerError(f"broker refused {what}: {exc}") from exc
        except _PUBLISH_FAULTS as exc:
            self.count_failure("unavailable")
            raise BrokerError(f"cannot publish {what}: {type(exc).__name__}: {exc}") from exc

    def count_failure(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages that could not be published for ``reason`` (metrics)."""
        if self._metrics is not None:
            self._metrics.publish_failures.labels(reason).inc(n)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None


def _epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
