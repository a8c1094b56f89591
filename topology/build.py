"""Build the platform's topology from its settings and task-type queue groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from topology.spec import BindingSpec, DelayTier, ExchangeSpec, QueueSpec, Topology, WorkQueue, _frozen

WORK_EXCHANGE = "tasks.exchange"
DEAD_LETTER_EXCHANGE = "tasks.dlx.exchange"
DEAD_LETTER_QUEUE = "tasks.dlq.queue"
EVENTS_EXCHANGE = "tasks.events.exchange"
DELAY_EXCHANGE = "tasks.delay.exchange"
#: TTL tiers in seconds: powers of two up to 68 minutes. Longer delays take several hops.
DEFAULT_DELAY_TIERS: tuple[int, ...] = tuple(2**i for i in range(13))


def work_queue_name(group: str, prefix: str = "") -> str:
    """``tasks.work.<group>``, with the optional prefix."""
    return f"{prefix}tasks.work.{group}"


def group_routing_key(group: str) -> str:
    """Routing key that reaches a whole queue group (used by returning delayed messages)."""
    return f"queue.{group}"


def build_topology(
    queue_groups: Mapping[str, Sequence[str]],
    *,
    prefix: str = "",
    delivery_limit: int = 5,
    delay_mode: str = "ttl",
    delay_tiers: Sequence[int] = DEFAULT_DELAY_TIERS,
) -> Topology:
    """The topology for ``queue_groups`` (queue group -> task types routed to it).

    Work queues are quorum queues that dead-letter to ``tasks.dlx.exchange`` with
    at-least-once dead-lettering (so nothing is lost between the work queue and the
    DLQ), and carry an explicit ``x-delivery-limit`` so a poison message that keeps
    killing its worker ends in the DLQ instead of looping.

    Delayed retries: in ``ttl`` mode each group gets a ladder of quorum queues, one
    ``x-message-ttl`` each, dead-lettering back to ``tasks.exchange`` with the group's
    routing key (no head-of-line blocking: every message in a tier waits equally long). In
    ``plugin`` mode an ``x-delayed-message`` exchange is declared instead (needs the
    rabbitmq_delayed_message_exchange plugin).
    """
    if delay_mode not in ("ttl", "plugin"):
        raise ValueError(f"delay_mode must be 'ttl' or 'plugin', got {delay_mode!r}")
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
    tiers = tuple(sorted(set(delay_tiers))) if delay_mode == "ttl" else ()
    work_queues = tuple(
        WorkQueue(
            group=group,
            queue=work_queue_name(group, prefix),
            task_types=tuple(sorted(types)),
            group_key=group_routing_key(group),
            delay_tiers=tuple(DelayTier(n, f"{prefix}tasks.delay.{group}.{n}s") for n in tiers),
        )
        for group, types in sorted(queue_groups.items())
    )
    delay_x = f"{prefix}{DELAY_EXCHANGE}" if delay_mode == "plugin" else ""
    exchanges = (
        ExchangeSpec(work_x, "direct"),
        ExchangeSpec(dlx, "fanout"),
        ExchangeSpec(events_x, "topic"),
        *(
            (ExchangeSpec(delay_x, "x-delayed-message", arguments=_frozen({"x-delayed-type": "direct"})),)
            if delay_x
            else ()
        ),
    )
    tier_queues = tuple(
        QueueSpec(
            tier.queue,
            arguments=_frozen(
                {
                    "x-queue-type": "quorum",
                    "x-message-ttl": tier.seconds * 1000,
                    "x-dead-letter-exchange": work_x,
                    "x-dead-letter-routing-key": wq.group_key,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            ),
        )
        for wq in work_queues
        for tier in wq.delay_tiers
    )
    queues = (
        *(QueueSpec(wq.queue, arguments=work_args) for wq in work_queues),
        QueueSpec(dlq, arguments=_frozen({"x-queue-type": "quorum"})),
        *tier_queues,
    )
    bindings = (
        *(BindingSpec(work_x, wq.queue, task_type) for wq in work_queues for task_type in wq.task_types),
        *(BindingSpec(work_x, wq.queue, wq.group_key) for wq in work_queues),
        *(
            BindingSpec(delay_x, wq.queue, task_type)
            for wq in work_queues
            for task_type in wq.task_types
            if delay_x
        ),
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
        delay_mode="plugin" if delay_x else "ttl",
        delay_exchange=delay_x,
    )
