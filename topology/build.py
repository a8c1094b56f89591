"""Build the platform's topology from its settings and task-type queue groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from topology.spec import BindingSpec, ExchangeSpec, QueueSpec, Topology, WorkQueue, _frozen

WORK_EXCHANGE = "tasks.exchange"
DEAD_LETTER_EXCHANGE = "tasks.dlx.exchange"
DEAD_LETTER_QUEUE = "tasks.dlq.queue"
EVENTS_EXCHANGE = "tasks.events.exchange"


def work_queue_name(group: str, prefix: str = "") -> str:
    """``tasks.work.<group>``, with the optional prefix."""
    return f"{prefix}tasks.work.{group}"


def build_topology(
    queue_groups: Mapping[str, Sequence[str]],
    *,
    prefix: str = "",
    delivery_limit: int = 5,
) -> Topology:
    """The topology for ``queue_groups`` (queue group -> task types routed to it).

    Work queues are quorum queues that dead-letter to ``tasks.dlx.exchange`` with
    at-least-once dead-lettering (so nothing is lost between the work queue and the
    DLQ), and carry an explicit ``x-delivery-limit`` so a poison message that keeps
    killing its worker ends in the DLQ instead of looping.
    """
    if delivery_limit < 1:
        raise ValueError(f"delivery_limit must be >= 1, got {delivery_limit}")
    work_x = f"{prefix}{WORK_EXCHANGE}"
    dlx = f"{prefix}{DEAD_LETTER_EXCHANGE}"
    dlq = f"{prefix}{DEAD_LETTER_QUEUE}"
    events_x = f"{prefix}{EVENTS_EXCHANGE}"

    work_args = _frozen(
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
            "x-delivery-limit": delivery_limit,
        }
    )
    work_queues = tuple(
        WorkQueue(group=group, queue=work_queue_name(group, prefix), task_types=tuple(sorted(types)))
        for group, types in sorted(queue_groups.items())
    )
    exchanges = (
        ExchangeSpec(work_x, "direct"),
        ExchangeSpec(dlx, "fanout"),
        ExchangeSpec(events_x, "topic"),
    )
    queues = (
        *(QueueSpec(wq.queue, arguments=work_args) for wq in work_queues),
        QueueSpec(dlq, arguments=_frozen({"x-queue-type": "quorum"})),
    )
    bindings = (
        *(BindingSpec(work_x, wq.queue, task_type) for wq in work_queues for task_type in wq.task_types),
        BindingSpec(dlx, dlq, ""),
    )
    return Topology(
        work_exchange=work_x,
        dead_letter_exchange=dlx,
        dead_letter_queue=dlq,
        events_exchange=events_x,
        work_queues=work_queues,
        exchanges=exchanges,
        queues=queues,
        bindings=bindings,
    )
