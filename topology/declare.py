"""Declare the topology (idempotent) or verify that the broker already has it."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelClosed, ChannelNotFoundEntity, ChannelPreconditionFailed

from taskplatform.errors import TopologyError
from topology.spec import ExchangeSpec, QueueSpec, Topology

log = logging.getLogger(__name__)


async def declare_topology(connection: AbstractRobustConnection, topology: Topology) -> None:
    """Declare every exchange, queue and binding. Safe to run again and from many processes.

    Raises TopologyError naming the entity when the broker already has it with other
    arguments (RabbitMQ answers PRECONDITION_FAILED; we never delete to "fix" it).
    """
    channel = await connection.channel()
    try:
        exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        for spec in topology.exchanges:
            exchanges[spec.name] = await _declare_exchange(channel, spec)
        queues = {}
        for qspec in topology.queues:
            queues[qspec.name] = await _declare_queue(channel, qspec)
        for binding in topology.bindings:
            await queues[binding.queue].bind(
                exchanges[binding.exchange],
                routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
            )
    except ChannelPreconditionFailed as exc:
        raise TopologyError(f"broker topology conflicts with the declared one: {exc}") from exc
    finally:
        if not channel.is_closed:
            await channel.close()
    log.info(
        "topology declared: %d exchanges, %d queues, %d bindings",
        len(topology.exchanges),
        len(topology.queues),
        len(topology.bindings),
    )


async def _declare_exchange(
    channel: AbstractChannel, spec: ExchangeSpec, *, passive: bool = False
) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(
        spec.name, spec.kind, durable=spec.durable, arguments=dict(spec.arguments), passive=passive
    )


async def _declare_queue(
    channel: AbstractChannel, spec: QueueSpec, *, passive: bool = False
) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(
        spec.name, durable=spec.durable, arguments=dict(spec.arguments), passive=passive
    )


@dataclass(frozen=True)
class TopologyProblem:
    """One difference between the declared and the actual topology."""

    entity: str
    problem: str

    def __str__(self) -> str:
        return f"{self.entity}: {self.problem}"


async def find_topology_problems(
    connection: AbstractRobustConnection, topology: Topology
) -> list[TopologyProblem]:
    """Compare the broker with ``topology`` without creating anything.

    Each entity is first checked passively (does it exist?), then redeclared with the
    expected type and arguments: on an existing entity that changes nothing, and the
    broker refuses it with PRECONDITION_FAILED when type, durability or arguments differ.
    Bindings cannot be read over AMQP 0-9-1 and are not compared.
    """
    problems: list[TopologyProblem] = []
    for spec in topology.exchanges:
        problem = await _check(connection, spec)
        if problem:
            problems.append(TopologyProblem(f"exchange {spec.name!r}", problem))
    for qspec in topology.queues:
        problem = await _check(connection, qspec)
        if problem:
            problems.append(TopologyProblem(f"queue {qspec.name!r}", problem))
    return problems


async def _check(connection: AbstractRobustConnection, spec: ExchangeSpec | QueueSpec) -> str | None:
    # A failed declare closes its channel, so each check gets its own.
    for passive in (True, False):
        channel = await connection.channel()
        try:
            if isinstance(spec, ExchangeSpec):
                await _declare_exchange(channel, spec, passive=passive)
            else:
                await _declare_queue(channel, spec, passive=passive)
        except ChannelNotFoundEntity:
            return "missing"
        except ChannelPreconditionFailed as exc:
            return f"differs from the declaration ({_reply_text(exc)})"
        except ChannelClosed as exc:
            return f"check failed ({_reply_text(exc)})"
        finally:
            if not channel.is_closed:
                await channel.close()
    return None


def _reply_text(exc: Exception) -> str:
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    return str(args[1]) if len(args) > 1 else str(exc)


@dataclass(frozen=True)
class QueueDepth:
    """What a passive declare tells of a queue: messages ready (not unacked ones) and consumers."""

    ready: int
    consumers: int


async def queue_depths(
    connection: AbstractRobustConnection, topology: Topology
) -> dict[str, QueueDepth | None]:
    """Every work queue (each priority level) and the DLQ, by passive declare: cheap, creates
    nothing; None for a queue that does not exist. Unacked counts need the management or
    Prometheus plugin (``rabbitmq_queue_messages_unacked``)."""
    names = [q for wq in topology.work_queues for q in wq.queues] + [topology.dead_letter_queue]
    depths: dict[str, QueueDepth | None] = {}
    opened = [await connection.channel()]
    try:
        for name in names:
            try:
                # robust=False: nothing to restore after a reconnect, this is a one-off look
                declared = await opened[-1].declare_queue(name, passive=True, robust=False)
            except ChannelNotFoundEntity:
                depths[name] = None
                opened.append(await connection.channel())  # the failed declare closed the last one
                continue
            result = declared.declaration_result
            depths[name] = QueueDepth(
                ready=int(result.message_count or 0), consumers=int(result.consumer_count or 0)
            )
    finally:
        for channel in opened:  # every one, also those the broker closed (a robust one reopens)
            with contextlib.suppress(Exception):
                await channel.close()
    return depths


async def verify_topology(connection: AbstractRobustConnection, topology: Topology) -> None:
    """Raise TopologyError listing every difference; return quietly when none."""
    problems = await find_topology_problems(connection, topology)
    if problems:
        lines = "\n  ".join(str(p) for p in problems)
        raise TopologyError(
            f"broker topology differs from the declared one:\n  {lines}\n"
            "run 'taskplatform topology declare' for missing entities; conflicting ones must be "
            "deleted or migrated by an operator"
        )
