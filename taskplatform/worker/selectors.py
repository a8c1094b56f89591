"""Following the selectors stream: a worker consumes the queue of every selector it matches.

A selector is "any worker serving a task type and carrying some labels" (``topology.spec.
selector_id``); the API declares its queue and announces it on the ``tasks.selectors`` stream.
A worker reads the stream from its start (at every start and reconnect), so one started late
learns every selector announced within the stream's week (the API announces each one it routes
to again every day), and consumes the queues of those whose type it serves and whose labels it
carries, on its work channel, sharing the slots of untargeted work.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from taskplatform.messaging.connection import BrokerConnection
from taskplatform.models.target import SelectorAnnouncement
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.config import WorkerConfig
from topology.spec import Topology

log = logging.getLogger("taskplatform.worker.consumer")

#: Selector announcements a worker takes from the stream at once.
SELECTOR_STREAM_PREFETCH = 100


def shown(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True)
class _Following:
    """A selector this worker follows: its consumer (None while it is being started)."""

    consumer: tuple[AbstractQueue, str] | None = None


class SelectorFollower:
    """Reads the selectors stream and consumes the queues of the selectors this worker matches.

    ``consumers`` is the worker's list of (queue, consumer tag), which the worker cancels when
    it stops; ``handler`` gets every delivery of a selector's queue.
    """

    def __init__(
        self,
        broker: BrokerConnection,
        topology: Topology,
        config: WorkerConfig,
        registry: ExecutableRegistry,
        *,
        consumers: list[tuple[AbstractQueue, str]],
        handler: Callable[[AbstractIncomingMessage], Awaitable[Any]],
    ) -> None:
        self._broker = broker
        self._topology = topology
        self._config = config
        self._registry = registry
        self._consumers = consumers
        self._handler = handler
        self._channel: AbstractChannel | None = None
        self._stream_channel: AbstractChannel | None = None
        #: The selectors whose queues this worker consumes, with their consumers.
        self._following: dict[str, _Following] = {}

    @property
    def following(self) -> set[str]:
        """The selectors whose queues this worker consumes (or is starting to)."""
        return set(self._following)

    async def start(self, channel: AbstractChannel) -> None:
        """Read the stream from its start on a channel of its own; consume the matching
        selectors' queues on ``channel`` (the work channel)."""
        self._channel = channel
        self._following = {}
        self._stream_channel = await self._broker.channel()
        await self._stream_channel.set_qos(prefetch_count=SELECTOR_STREAM_PREFETCH)
        stream = await self._stream_channel.declare_queue(self._topology.selectors_stream, passive=True)
        tag = await stream.consume(self._on_selector, no_ack=False, arguments={"x-stream-offset": "first"})
        self._consumers.append((stream, tag))

    async def stop(self) -> None:
        channel, self._stream_channel, self._channel = self._stream_channel, None, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _on_selector(self, message: AbstractIncomingMessage) -> None:
        try:
            announced: SelectorAnnouncement | None = SelectorAnnouncement.model_validate_json(message.body)
        except ValueError as exc:
            log.warning("ignoring a malformed selector announcement: %s", str(exc).splitlines()[0])
            announced = None
        try:
            if announced is not None and self._matches(announced):
                following = self._following.get(announced.selector)
                if following is None:
                    await self._consume(announced)
                elif following.consumer is not None and announced.consumers == 0:
                    # Announced, after this worker's consumer started, as consumed by nobody:
                    # the queue was deleted (or expired) and made again, and the broker does not
                    # tell a quorum queue's consumers it is gone. Consume it afresh. (At start-up
                    # an older such announcement does this once more, to no harm.)
                    log.info(
                        "selector %s was announced with no consumer; consuming it afresh", announced.selector
                    )
                    await self._unfollow(announced.selector, following)
                    await self._consume(announced)
        finally:
            with contextlib.suppress(Exception):
                await message.ack()  # a stream's messages stay: the ack only gives credit back

    def _matches(self, announced: SelectorAnnouncement) -> bool:
        labels = self._config.labels
        served = announced.task_type in self._registry
        return served and all(labels.get(k) == v for k, v in announced.labels.items())

    async def _consume(self, announced: SelectorAnnouncement) -> None:
        """Consume the selector's queue. It is declared (with this worker's arguments) on a
        channel of its own: a queue whose arguments differ (another process's
        ``NODE_QUEUE_EXPIRES_SECONDS``) makes the broker close the declaring channel, which must
        not be the one every work consumer runs on. The selector counts as followed only once
        its consumer runs, so a failure is tried again at the next announcement or reconnect."""
        channel = self._channel
        if channel is None or announced.selector in self._following:
            return
        self._following[announced.selector] = _Following()
        expires = self._config.node_queue_expires
        spec = self._topology.selector_queue(announced.selector, expires_seconds=expires)
        try:
            declaring = await self._broker.channel()
            try:
                await declaring.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
            finally:
                with contextlib.suppress(Exception):
                    await declaring.close()
            queue = await channel.declare_queue(spec.name, passive=True)
            for binding in self._topology.selector_bindings(announced.selector):
                await queue.bind(binding.exchange, routing_key=binding.routing_key)
            tag = await queue.consume(self._handler, no_ack=False)
        except Exception as exc:
            self._following.pop(announced.selector, None)
            log.error(
                "cannot consume %s (%s for workers with %s): %s; tried again at its next announcement",
                spec.name,
                announced.task_type,
                shown(announced.labels),
                exc,
            )
            return
        self._consumers.append((queue, tag))
        self._following[announced.selector] = _Following(consumer=(queue, tag))
        log.info(
            "consuming %s (%s for workers with %s)", spec.name, announced.task_type, shown(announced.labels)
        )

    async def _unfollow(self, selector: str, following: _Following) -> None:
        """Stop consuming a selector's queue (its consumer may be gone already)."""
        self._following.pop(selector, None)
        if following.consumer is None:
            return
        with contextlib.suppress(ValueError):
            self._consumers.remove(following.consumer)
        queue, tag = following.consumer
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
