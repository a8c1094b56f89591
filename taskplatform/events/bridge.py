"""The external event bridge: accepted lifecycle events to the events exchange, confirmed.

An event-bus observer. Each batch is published with publisher confirms, pipelined across
tasks but strictly in order within one task, and retried until the broker confirms it:
the bus hands over the next batch only when ``observe`` returns, so while the broker is
away the backlog builds up in the bus's bounded buffer, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from taskplatform.errors import BrokerError
from taskplatform.events.bus import Published
from taskplatform.events.external import SCHEMA_VERSION, to_external
from taskplatform.events.models import EventType
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.metrics.registry import Metrics

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
HEADER_SCHEMA_VERSION = "x-schema-version"
APP_ID = "taskplatform"


def event_message(
    body: bytes,
    *,
    event_id: str,
    routing_key: str,
    occurred_at: datetime,
    schema_version: str,
    correlation_id: str | None = None,
) -> aio_pika.Message:
    """An external event as the events exchange carries it (task and worker events alike):
    persistent JSON, the event id as ``message_id``, the routing key as ``type``, the schema's
    version in a header."""
    return aio_pika.Message(
        body=body,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
        correlation_id=correlation_id,
        type=routing_key,
        timestamp=occurred_at,
        app_id=APP_ID,
        headers={HEADER_SCHEMA_VERSION: schema_version},
    )


@dataclass(eq=False)
class _Outgoing:
    """One encoded event and how often it has been tried."""

    event_id: str
    routing_key: str
    message: aio_pika.Message
    attempts: int = 0


class ExternalEventBridge:
    """Publishes accepted lifecycle events as versioned JSON to the events exchange.

    Delivery is at least once: an event the broker did not confirm (nack, confirm timeout,
    channel or connection lost) is published again, with exponential backoff, until it is
    confirmed or the bridge closes; a confirm lost in transit makes a duplicate, which
    consumers drop by ``event_id``. Events of one task go out one after another (the next
    only once the previous is confirmed), so a retried event is never overtaken; events
    of different tasks are in flight together.

    Counters, for metrics: ``published`` (events confirmed), ``publish_failures``
    (publishes that got no confirm), ``retries`` (publishes of an event tried before),
    ``abandoned`` (unconfirmed events given up because the bridge closed), ``unencodable``
    (events that could not be turned into the external format; a bug, logged).

    Args:
        broker: The process's broker connection; the bridge opens its own channel on it.
        exchange: The events exchange (``Topology.events_exchange``).
        confirm_timeout: Seconds to wait for one publish's confirm before retrying it.
        initial_backoff: Pause after the first failed round; doubles per failed round.
        max_backoff: Cap of that pause.
        max_in_flight: Unconfirmed publishes allowed at once.
        name: Observer name in the bus's stats.
        types: Event types to publish; None publishes every type.
    """

    def __init__(
        self,
        broker: BrokerConnection,
        exchange: str,
        *,
        confirm_timeout: float = 5.0,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
        max_in_flight: int = 128,
        name: str = "external-events",
        types: Iterable[EventType] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if confirm_timeout <= 0 or initial_backoff <= 0 or max_backoff < initial_backoff:
            raise ValueError("need confirm_timeout > 0 and 0 < initial_backoff <= max_backoff")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.name = name
        #: Event types to publish (None: all).
        self.types = frozenset(types) if types is not None else None
        self.published = 0
        self.publish_failures = 0
        self.retries = 0
        self.abandoned = 0
        self.unencodable = 0
        self._metrics = metrics
        self._broker = broker
        self._exchange_name = exchange
        self._confirm_timeout = confirm_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lock = asyncio.Lock()
        self._channel: AbstractChannel | None = None
        self._channel_connection: AbstractRobustConnection | None = None
        self._target: AbstractExchange | None = None
        self._closed_since: float | None = None
        self._closing = False
        self._wake = asyncio.Event()

    async def observe(self, batch: Sequence[Published]) -> None:
        """Publish ``batch``; return once every event is confirmed or the bridge is closing."""
        groups: dict[str, deque[_Outgoing]] = {}
        for item in batch:
            if self.types is not None and item.event.type not in self.types:
                continue
            outgoing = self._encode(item)
            if outgoing is not None:
                groups.setdefault(item.event.task_id, deque()).append(outgoing)
        failed_rounds = 0
        while groups and not self._closing:
            errors: list[BaseException] = []
            await asyncio.gather(*(self._send_in_order(queue, errors) for queue in groups.values()))
            groups = {task_id: queue for task_id, queue in groups.items() if queue}
            if not groups:
                break
            failed_rounds += 1
            if self._closing:
                break
            delay = self._backoff(failed_rounds)
            log.warning(
                "%d event(s) of %d task(s) not confirmed by RabbitMQ (%s); retrying in %.1fs",
                sum(len(queue) for queue in groups.values()),
                len(groups),
                _describe(errors[0]) if errors else "unknown",
                delay,
            )
            await self._pause(delay)
        if groups:
            self._abandon(groups)
        elif failed_rounds:
            log.info("external events confirmed after %d failed round(s)", failed_rounds)

    async def close(self) -> None:
        """Stop retrying (a pending ``observe`` returns) and close the channel."""
        self._closing = True
        self._wake.set()
        channel, self._channel, self._target = self._channel, None, None
        if channel is not None:
            # Also stops aio-pika from restoring it; failing in-flight publishes end the round.
            with contextlib.suppress(Exception):
                await channel.close()

    def _encode(self, item: Published) -> _Outgoing | None:
        try:
            event = to_external(item)
            body = event.model_dump_json().encode()
        except Exception:
            # A bug, not a broker fault: retrying cannot help, and must not block the rest.
            self.unencodable += 1
            self._count("unencodable")
            log.exception(
                "cannot encode event %s of task %s; skipped", item.event.event_id, item.event.task_id
            )
            return None
        message = event_message(
            body,
            event_id=event.event_id,
            routing_key=event.routing_key,
            occurred_at=event.occurred_at,
            schema_version=SCHEMA_VERSION,
            correlation_id=event.task.id,
        )
        return _Outgoing(event.event_id, event.routing_key, message)

    async def _send_in_order(self, queue: deque[_Outgoing], errors: list[BaseException]) -> None:
        """Publish one task's events, each after the previous one is confirmed; stop at a failure."""
        while queue and not self._closing:
            outgoing = queue[0]
            if outgoing.attempts:
                self.retries += 1
            outgoing.attempts += 1
            try:
                async with self._slots:
                    await self._publish(outgoing)
            except Exception as exc:
                # Nack, timeout, lost channel or connection: all mean "not confirmed", so retry.
                self.publish_failures += 1
                self._count("failed")
                errors.append(exc)
                return
            queue.popleft()
            self.published += 1
            self._count("published")

    async def _publish(self, outgoing: _Outgoing) -> None:
        # One deadline for the whole publish: waiting for a (re)connection counts too.
        async with asyncio.timeout(self._confirm_timeout):
            exchange = await self._exchange()
            await exchange.publish(outgoing.message, routing_key=outgoing.routing_key, mandatory=False)

    async def _exchange(self) -> AbstractExchange:
        if self._closing:
            raise BrokerError("the external event bridge is closed")
        if self._target is None or self._needs_new_channel():
            async with self._lock:
                if self._target is None or self._needs_new_channel():
                    await self._open_channel()
        assert self._target is not None
        return self._target

    def _needs_new_channel(self) -> bool:
        connection = self._broker.connection  # raises BrokerError before the first connect
        if connection is not self._channel_connection or connection.is_closed:
            return True
        channel = self._channel
        if channel is None:
            return True
        if not channel.is_closed or not self._broker.is_connected:
            self._closed_since = None
            return False
        # aio-pika restores a robust channel after a reconnect; replacing it meanwhile would
        # race that restore. One still closed a while after the reconnect is closed for good.
        now = time.monotonic()
        if self._closed_since is None:
            self._closed_since = now
        return now - self._closed_since > self._confirm_timeout

    async def _open_channel(self) -> None:
        old, self._channel, self._target = self._channel, None, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        connection = self._broker.connection
        channel = await self._broker.channel(publisher_confirms=True)
        if self._closing:  # close() ran while the channel was opening: do not leak it
            with contextlib.suppress(Exception):
                await channel.close()
            raise BrokerError("the external event bridge is closed")
        self._channel, self._channel_connection = channel, connection
        self._closed_since = None
        self._target = await channel.get_exchange(self._exchange_name, ensure=False)

    def _backoff(self, failed_rounds: int) -> float:
        base = self._initial_backoff * 2.0 ** min(failed_rounds - 1, 30)
        # Jitter spreads the retries of many processes after a broker restart.
        return min(self._max_backoff, base * random.uniform(0.8, 1.2))  # noqa: S311

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._metrics is not None and n:
            self._metrics.events_bridged.labels(outcome).inc(n)

    def _abandon(self, groups: dict[str, deque[_Outgoing]]) -> None:
        count = sum(len(queue) for queue in groups.values())
        self.abandoned += count
        self._count("abandoned", count)
        log.warning(
            "external event bridge closing: %d unconfirmed event(s) of %d task(s) dropped",
            count,
            len(groups),
        )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
