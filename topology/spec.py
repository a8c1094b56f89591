"""The RabbitMQ topology as data: frozen declarations, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

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
class WorkQueue:
    """A work queue and the task types routed to it."""

    group: str
    queue: str
    task_types: tuple[str, ...]


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

    def routing_key_for(self, task_type: str) -> str:
        """Routing key of a task message on the work exchange (the task type)."""
        return task_type

    def queue_for(self, task_type: str) -> str | None:
        """Name of the work queue that receives ``task_type``, if any."""
        for wq in self.work_queues:
            if task_type in wq.task_types:
                return wq.queue
        return None
