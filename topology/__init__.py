"""RabbitMQ topology: declared as data, applied idempotently, verifiable."""

from topology.build import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    PARKING_QUEUE,
    WORK_EXCHANGE,
    build_topology,
    work_queue_name,
)
from topology.declare import (
    QueueDepth,
    declare_topology,
    find_topology_problems,
    queue_depths,
    verify_topology,
)
from topology.spec import BindingSpec, DelayHop, DelayTier, ExchangeSpec, QueueSpec, Topology, WorkQueue

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "EVENTS_EXCHANGE",
    "PARKING_QUEUE",
    "WORK_EXCHANGE",
    "BindingSpec",
    "DelayHop",
    "DelayTier",
    "ExchangeSpec",
    "QueueDepth",
    "QueueSpec",
    "Topology",
    "WorkQueue",
    "build_topology",
    "declare_topology",
    "find_topology_problems",
    "queue_depths",
    "verify_topology",
    "work_queue_name",
]
