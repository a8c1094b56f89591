"""The RabbitMQ topology as data: frozen declarations, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

#: A delayed message this close to its time is delivered rather than delayed again.
DELIVER_EARLY_SECONDS = 0.5

ExchangeKind = Literal["direct", "topic", "fanout", "headers", "x-delayed-message"]


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


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
    """Messages published to ``exchange`` with ``routing_key`` reach ``queue``."""

    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True)
class DelayTier:
    """A TTL queue holding messages for ``seconds``, then dead-lettering them to a work queue."""

    seconds: int
    queue: str


@dataclass(frozen=True)
class WorkQueue:
    """A work queue, the task types routed to it, and its delay tiers (TTL mode)."""

    group: str
    queue: str
    task_types: tuple[str, ...]
    group_key: str = ""
    delay_tiers: tuple[DelayTier, ...] = ()


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

    def routing_key_for(self, task_type: str) -> str:
        """Routing key of a task message on the work exchange (the task type)."""
        return task_type

    def queue_for(self, task_type: str) -> str | None:
        """Name of the work queue that receives ``task_type``, if any."""
        wq = self.work_queue_for(task_type)
        return wq.queue if wq else None

    def work_queue_for(self, task_type: str) -> WorkQueue | None:
        for wq in self.work_queues:
            if task_type in wq.task_types:
                return wq
        return None

    def delay_hop(self, task_type: str, remaining: float) -> tuple[str, str, float] | None:
        """Where to publish a message that must wait ``remaining`` seconds more.

        Returns (exchange, routing key, seconds this hop waits), or None when the wait is
        under ``DELIVER_EARLY_SECONDS`` (deliver now). TTL mode takes the longest tier that
        fits (the shortest when none does, overshooting by under half a second), so a long
        delay takes a few hops and each returning message is re-delayed by what is left;
        plugin mode waits the whole delay in one hop (``x-delay`` header).
        """
        if remaining < DELIVER_EARLY_SECONDS:
            return None
        if self.delay_mode == "plugin":
            return self.delay_exchange, self.routing_key_for(task_type), remaining
        wq = self.work_queue_for(task_type)
        if wq is None or not wq.delay_tiers:
            return None
        fitting = [t for t in wq.delay_tiers if t.seconds <= remaining]
        tier = fitting[-1] if fitting else wq.delay_tiers[0]
        return "", tier.queue, float(tier.seconds)
