"""Client write-coalescing benchmark (not a test): prints figures, asserts nothing.

Asks one question about issue 17's remaining targets: is a publisher's CPU spent on system
calls (aiormq writes every frame with its own ``send``), so that a client writing several frames
per call would be faster? It publishes ``--n`` confirmed, persistent 237-byte messages to a quorum
queue of its own (``--in-flight`` at once, spread over ``--channels`` channels) twice per round,
alternating:

- ``per-frame``: aiormq as it is, its writes counted;
- ``coalesced``: every write of one event-loop iteration joined into one ``send`` (a
  ``StreamWriter`` that buffers and flushes once per iteration, swapped in by replacing
  aiormq's TCP transport factory for this process only).

Per run it prints messages/s, the client's CPU per message (``time.process_time``, this process
only) and ``send`` calls per message, beside the raw aio-pika loop measured first in the run.

    .venv/bin/python -m tests.bench.bench_client_writes --rounds 2 --channels 8
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aio_pika
import aiormq.connection
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from tests.bench.harness import AMQP_URL, raw_baseline, run_bench


class Writes:
    """``send`` calls made through the swapped writer."""

    count = 0


class CountingWriter(asyncio.StreamWriter):
    """aiormq's writer as it is (each ``write`` one ``send`` when the socket takes it), counted."""

    def __init__(self, inner: asyncio.StreamWriter) -> None:
        super().__init__(inner.transport, inner._protocol, inner._reader, inner._loop)  # type: ignore[attr-defined]
        self._inner = inner  # the original closes the transport when collected

    def write(self, data: bytes | bytearray | memoryview) -> None:
        Writes.count += 1
        super().write(data)


class CoalescingWriter(CountingWriter):
    """Buffers what one event-loop iteration writes and sends it as one ``write``."""

    def __init__(self, inner: asyncio.StreamWriter) -> None:
        super().__init__(inner)
        self._buffer = bytearray()
        self._flush_scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            super().write(data)

    def close(self) -> None:
        self._flush()
        super().close()

    def write_eof(self) -> None:
        self._flush()
        super().write_eof()


def use_writer(writer_class: type[CountingWriter]) -> None:
    """Make aiormq's plain-TCP connections in this process write through ``writer_class``."""

    async def create(self: Any, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs.pop("ssl_context_provider", None)
        try:
            reader, writer = await asyncio.open_connection(host=url.host, port=url.port, **kwargs)
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, writer_class(writer)

    aiormq.connection.TCPTransportFactory.create = create  # type: ignore[method-assign]


async def publish_run(mode: str, *, n: int, in_flight: int, channels: int) -> dict[str, float]:
    use_writer(CoalescingWriter if mode == "coalesced" else CountingWriter)
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    queue_name = f"bench.writes.{uuid.uuid4().hex[:8]}"
    try:
        chans = [await connection.channel() for _ in range(channels)]
        queue = await chans[0].declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        body = b"x" * 237
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with gate:
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await chans[i % channels].default_exchange.publish(message, routing_key=queue_name)

        Writes.count = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        cpu1, wall1 = time.process_time(), time.perf_counter()
        writes = Writes.count
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    return {
        "msgs_per_s": n / (wall1 - wall0),
        "cpu_us": (cpu1 - cpu0) / n * 1e6,
        "sends_per_msg": writes / n,
    }


async def main(args: argparse.Namespace) -> None:
    raw = await raw_baseline(args.raw_n)
    cpu_us = raw.cpu_ms_per_msg * 1000
    print(f"raw aio-pika loop: {raw.msgs_per_s:,.0f} msgs/s ({cpu_us:.0f} us of CPU per message)")
    print(f"{args.n} confirmed publishes, {args.in_flight} in flight, {args.channels} channel(s)")
    print("mode        msgs/s   x raw   client CPU us/msg   sends/msg")
    for _ in range(args.rounds):
        for mode in ("per-frame", "coalesced"):
            got = await publish_run(mode, n=args.n, in_flight=args.in_flight, channels=args.channels)
            print(
                f"{mode:10s} {got['msgs_per_s']:7,.0f}   {got['msgs_per_s'] / raw.msgs_per_s:5.2f}"
                f"   {got['cpu_us']:17.0f}   {got['sends_per_msg']:9.2f}"
            )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="publishes per run")
    parser.add_argument("--in-flight", type=int, default=500, help="publishes awaiting their confirm at once")
    parser.add_argument("--channels", type=int, default=8, help="channels the publishes are spread over")
    parser.add_argument("--rounds", type=int, default=2, help="alternating pairs of runs")
    parser.add_argument("--raw-n", type=int, default=10000, help="messages of the raw loop")
    run_bench(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
