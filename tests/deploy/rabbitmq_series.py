"""RabbitMQ's per-queue series for the dashboard tests: rabbitmq_prometheus's own when the broker
serves them, else a stand-in (``QueueFigures``) serving the same series for the test's queues."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterable

import aio_pika
import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tests.deploy.dashboard import RABBITMQ_SERIES
from tests.support.services import RABBITMQ_URL


class QueueFigures(Collector):
    """A stand-in for rabbitmq_prometheus's per-queue series, for a broker without the plugin:
    messages ready and consumers of this test's queues, read over AMQP every half second (AMQP
    does not tell unacknowledged messages: 0; ``messages`` is ready + unacked)."""

    def __init__(self, queues: list[str], vhost: str) -> None:
        self._queues = queues
        self._vhost = vhost
        self._figures: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                connection = await aio_pika.connect(RABBITMQ_URL)
            except (aio_pika.exceptions.AMQPError, OSError):
                await asyncio.sleep(0.5)  # the broker restarts (another test's doing): try again
                continue
            try:
                await self._poll_over(connection)
            except (aio_pika.exceptions.AMQPError, OSError):
                continue  # the connection went away: a new one
            finally:
                with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
                    await connection.close()

    async def _poll_over(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        while not self._stop.is_set():
            for name in self._queues:
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:  # not declared (yet); it closed the channel
                    self._figures.pop(name, None)
                    channel = await connection.channel()
                    continue
                result = queue.declaration_result
                self._figures[name] = (int(result.message_count), int(result.consumer_count))
            await asyncio.sleep(0.5)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, f"{name} (stand-in)", labels=["vhost", "queue"])
            for name in sorted(RABBITMQ_SERIES)
        }
        for queue, (ready, consumers) in sorted(self._figures.items()):
            families["rabbitmq_queue_messages"].add_metric([self._vhost, queue], ready)
            families["rabbitmq_queue_messages_ready"].add_metric([self._vhost, queue], ready)
            families["rabbitmq_queue_messages_unacked"].add_metric([self._vhost, queue], 0)
            families["rabbitmq_queue_consumers"].add_metric([self._vhost, queue], consumers)
        return list(families.values())


def rabbitmq_prometheus_url() -> str | None:
    """rabbitmq_prometheus's per-object endpoint when the broker serves it, else None."""
    url = os.environ.get(
        "TASKPLATFORM_TEST_RABBITMQ_METRICS_URL", "http://127.0.0.1:15692/metrics/per-object"
    )
    try:
        response = httpx.get(url, timeout=3)
    except httpx.HTTPError:
        return None
    return url if response.status_code == 200 and "rabbitmq_queue_messages" in response.text else None
