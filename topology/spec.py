"""The RabbitMQ topology as data: frozen declarations, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

#: A delayed message this close to its time is delivered rather than delayed again.
DELIVER_EARLY_SECONDS = 0.5

ExchangeKind = Literal["direct", "topic", "fanout", "headers", "x-delayed-message"]


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


def priority_level(priority: int, levels: int, max_priority: int) -> int:
    """The level (queue index) of ``priority`` when 0..``max_priority`` is split into ``levels``
    equal bands; with as many levels as priorities, each priority is its own level."""
    clamped = min(max(priority, 0), max_priority)
    return clamped * levels // (max_priority + 1)


def band_start(level: int, levels: int, max_priority: int) -> int:
    """The lowest priority of ``level``'s band. It names the level's queue and routing key, so a
    name means the same priorities whatever the number of levels."""
    return -(-level * (max_priority + 1) // levels)  # ceiling division


def level_routing_key(task_type: str, start: int) -> str:
    """The task type for the lowest band, ``<task_type>@p<start>`` above it (``@`` cannot occur
    in a task type)."""
    return task_type if start == 0 else f"{task_type}@p{start}"


def selector_id(task_type: str, labels: Mapping[str, str]) -> str:
    """The id of the selector "a worker serving ``task_type`` that carries ``labels``": the same
    for the same type and labels, in any order."""
    canonical = "\x00".join([task_type, *(f"{k}={v}" for k, v in sorted(labels.items()))])
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def selector_routing_key(selector: str) -> str:
    """The routing key of a message for any worker matching ``selector``."""
    return f"@select:{selector}"


def node_queue_name(node_id: str, prefix: str = "") -> str:
    """``tasks.node.<node id>``, with the prefix: the queue of the tasks aimed at a node."""
    return f"{prefix}tasks.node.{node_id}"


def node_routing_key(node_id: str) -> str:
    """The routing key of a message aimed at worker node ``node_id`` (``@`` cannot begin a task
    type's key, so it never meets a work queue's binding)."""
    return f"@node:{node_id}"


@dataclass(frozen=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    kind: ExchangeKind
    durable: bool = True
    arguments: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class QueueSpec:
    """A queue to declare."""

    name: str
    durable: bool = True
    arguments: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class BindingSpec:
    """Messages published to ``exchange`` with ``routing_key`` reach ``queue`` (on a headers
    exchange: those whose headers match ``arguments``)."""

    exchange: str
    queue: str
    routing_key: str
    arguments: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class DelayTier:
    """A TTL queue holding messages for ``seconds``, then dead-lettering them back to the work
    exchange with the routing key they were published with. Messages reach it through the
    delay exchange (headers) by carrying ``header`` = ``value`` (not an ``x-`` name: a headers
    exchange ignores those when matching)."""

    seconds: int
    queue: str
    header: str = "delay-tier"

    @property
    def value(self) -> str:
        return f"{self.seconds}s"


@dataclass(frozen=True)
class DelayHop:
    """One leg of a delay: publish to ``exchange`` with ``routing_key`` and ``headers``; the
    message comes back to its work queue after ``seconds``."""

    exchange: str
    routing_key: str
    seconds: float
    headers: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class WorkQueue:
    """A queue group: the task types routed to it and its quorum queues, one per priority level.

    ``queues[level]`` holds the messages of that level; ``queue`` (level 0) is the group's
    base queue, ``tasks.work.<group>``.
    """

    group: str
    queues: tuple[str, ...]
    task_types: tuple[str, ...]

    @property
    def queue(self) -> str:
        return self.queues[0]


@dataclass(frozen=True)
class Topology:
    """Everything the platform declares on the broker."""

    work_exchange: str
    dead_letter_exchange: str
    dead_letter_queue: str
    events_exchange: str
    work_queues: tuple[WorkQueue, ...]
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]
    delay_mode: Literal["ttl", "plugin"] = "ttl"
    delay_exchange: str = ""
    delay_tiers: tuple[DelayTier, ...] = ()
    #: Priorities are 0 .. max_priority; they map onto ``priority_levels`` queues per group.
    priority_levels: int = 1
    max_priority: int = 9
    #: Dead messages the store keeps refusing wait here for an operator (no binding: the
    #: DLQ consumer publishes to it through the default exchange).
    parking_queue: str = ""

    #: The stream announcing the selectors of tasks aimed at labels (workers read it from its start).
    selectors_stream: str = ""
    #: The prefix of every name, and the work queues' arguments (node queues take them too).
    prefix: str = ""
    work_queue_arguments: Mapping[str, Any] = field(default_factory=_frozen)

    def node_queue(self, node_id: str, *, expires_seconds: float) -> QueueSpec:
        """Worker node ``node_id``'s own queue: a quorum queue like the work queues (same
        dead-lettering and delivery limit), holding the tasks aimed at that node; the broker
        deletes it once it has had no consumer for ``expires_seconds`` (``x-expires``)."""
        arguments = {**self.work_queue_arguments, "x-expires": max(1, int(expires_seconds * 1000))}
        return QueueSpec(node_queue_name(node_id, self.prefix), arguments=_frozen(arguments))

    def node_bindings(self, node_id: str) -> tuple[BindingSpec, ...]:
        """What routes a node's messages to its queue: the work exchange, and in plugin mode the
        delay exchange (in TTL mode the tiers dead-letter back to the work exchange)."""
        return self._route_bindings(node_queue_name(node_id, self.prefix), node_routing_key(node_id))

    def selector_queue(self, selector: str, *, expires_seconds: float) -> QueueSpec:
        """The queue of the tasks for any worker matching ``selector`` (``selector_id``), consumed
        by every such worker; the node queue's arguments."""
        arguments = {**self.work_queue_arguments, "x-expires": max(1, int(expires_seconds * 1000))}
        return QueueSpec(f"{self.prefix}tasks.select.{selector}", arguments=_frozen(arguments))

    def selector_bindings(self, selector: str) -> tuple[BindingSpec, ...]:
        return self._route_bindings(f"{self.prefix}tasks.select.{selector}", selector_routing_key(selector))

    def _route_bindings(self, queue: str, key: str) -> tuple[BindingSpec, ...]:
        bindings = [BindingSpec(self.work_exchange, queue, key)]
        if self.delay_mode == "plugin":
            bindings.append(BindingSpec(self.delay_exchange, queue, key))
        return tuple(bindings)

    def level_of(self, priority: int) -> int:
        """The priority level (queue index) of ``priority`` (see :func:`priority_level`)."""
        return priority_level(priority, self.priority_levels, self.max_priority)

    def routing_key_for(self, task_type: str, priority: int = 0) -> str:
        """Routing key of a task message on the work exchange (see :func:`level_routing_key`)."""
        level = self.level_of(priority)
        return level_routing_key(task_type, band_start(level, self.priority_levels, self.max_priority))

    def queue_for(self, task_type: str, priority: int = 0) -> str | None:
        """Name of the work queue that receives ``task_type`` at ``priority``, if any."""
        wq = self.work_queue_for(task_type)
        return wq.queues[self.level_of(priority)] if wq else None

    def work_queue_for(self, task_type: str) -> WorkQueue | None:
        for wq in self.work_queues:
            if task_type in wq.task_types:
                return wq
        return None

    def delay_hop(
        self, task_type: str, remaining: float, priority: int = 0, *, route: str | None = None
    ) -> DelayHop | None:
        """Where to publish a message that must wait ``remaining`` seconds more.

        None when the wait is under ``DELIVER_EARLY_SECONDS`` (deliver now). TTL mode takes the
        longest tier that fits (the shortest when none does, overshooting by under half a
        second), so a long delay takes a few hops and each returning message is re-delayed by
        what is left; plugin mode waits the whole delay in one hop (``x-delay`` header). Either
        way the message keeps its own routing key, which brings it back to its priority level
        (or, with ``route``, the routing key of an aimed task, to its node's or selector's queue).
        """
        if remaining < DELIVER_EARLY_SECONDS:
            return None
        routing_key = route if route is not None else self.routing_key_for(task_type, priority)
        if self.delay_mode == "plugin":
            return DelayHop(self.delay_exchange, routing_key, remaining)
        if not self.delay_tiers or (route is None and self.work_queue_for(task_type) is None):
            return None
        fitting = [t for t in self.delay_tiers if t.seconds <= remaining]
        tier = fitting[-1] if fitting else self.delay_tiers[0]
        return DelayHop(
            self.delay_exchange, routing_key, float(tier.seconds), _frozen({tier.header: tier.value})
        )
