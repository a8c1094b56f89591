"""Build the platform's topology from its settings and task-type queue groups.

Work queues are quorum queues that dead-letter to ``tasks.dlx.exchange`` with
at-least-once dead-lettering (so nothing is lost between the work queue and the
DLQ), and carry an explicit ``x-delivery-limit`` so a poison message that keeps
killing its worker ends in the DLQ instead of looping.

Priorities: quorum queues have none on RabbitMQ 3.x, so each group has one quorum queue
per priority level (``priority_levels`` equal bands of 0..``max_priority``), bound by
``<task_type>`` (level 0) and ``<task_type>@p<level>``; workers start the highest level
first (``taskplatform.worker.dispatch``).

Delayed retries: in ``ttl`` mode a ladder of quorum queues, one ``x-message-ttl`` each,
reached through a headers exchange (header ``delay-tier``) and dead-lettering back to
``tasks.exchange`` with the message's own routing key, so it returns to its group and
priority level (no head-of-line blocking: every message in a tier waits equally long). In
``plugin`` mode an ``x-delayed-message`` exchange is declared instead (needs the
rabbitmq_delayed_message_exchange plugin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from topology.spec import (
    BindingSpec,
    DelayTier,
    ExchangeSpec,
    QueueSpec,
    Topology,
    WorkQueue,
    _frozen,
    band_start,
    level_routing_key,
)

WORK_EXCHANGE = "tasks.exchange"
DEAD_LETTER_EXCHANGE = "tasks.dlx.exchange"
DEAD_LETTER_QUEUE = "tasks.dlq.queue"
#: Where the DLQ consumer parks a dead message the store keeps refusing (reached through the
#: default exchange; operators move it back with ``taskplatform dlq unpark``).
PARKING_QUEUE = "tasks.dlq.parking"
EVENTS_EXCHANGE = "tasks.events.exchange"
#: A stream (read from its start by every worker) announcing each selector of tasks aimed at
#: labels with ``mode: any``; kept a week (the API announces a selector again every day).
SELECTORS_STREAM = "tasks.selectors"
#: Plugin mode: the x-delayed-message exchange.
DELAY_EXCHANGE = "tasks.delay.exchange"
#: TTL mode: the headers exchange that routes a delayed message to its tier by a header.
DELAY_TIERS_EXCHANGE = "tasks.delay.tiers.exchange"
#: TTL tiers in seconds: powers of two up to 68 minutes. Longer delays take several hops.
DEFAULT_DELAY_TIERS: tuple[int, ...] = tuple(2**i for i in range(13))
#: Priorities 0..9, one queue each by default.
DEFAULT_MAX_PRIORITY = 9


def work_queue_name(group: str, prefix: str = "", band_start: int = 0) -> str:
    """``tasks.work.<group>`` for the lowest band, ``tasks.work.<group>.p<n>`` for the band whose
    lowest priority is ``n``, with the prefix."""
    base = f"{prefix}tasks.work.{group}"
    return base if band_start == 0 else f"{base}.p{band_start}"


def build_topology(
    queue_groups: Mapping[str, Sequence[str]],
    *,
    prefix: str = "",
    delivery_limit: int = 5,
    delay_mode: str = "ttl",
    delay_tiers: Sequence[int] = DEFAULT_DELAY_TIERS,
    priority_levels: int = DEFAULT_MAX_PRIORITY + 1,
    max_priority: int = DEFAULT_MAX_PRIORITY,
) -> Topology:
    """The topology for ``queue_groups`` (queue group -> task types routed to it).

    See the module's docstring for the queues, priorities and delay path it describes.
    """
    _check_arguments(delay_mode, delivery_limit, priority_levels, max_priority)
    work_x = f"{prefix}{WORK_EXCHANGE}"
    dlx = f"{prefix}{DEAD_LETTER_EXCHANGE}"
    dlq = f"{prefix}{DEAD_LETTER_QUEUE}"
    parking = f"{prefix}{PARKING_QUEUE}"
    events_x = f"{prefix}{EVENTS_EXCHANGE}"
    delay_x = f"{prefix}{DELAY_EXCHANGE if delay_mode == 'plugin' else DELAY_TIERS_EXCHANGE}"

    work_args = _work_queue_arguments(dlx, delivery_limit)
    starts = [band_start(level, priority_levels, max_priority) for level in range(priority_levels)]
    work_queues = _work_queues(queue_groups, prefix, starts)
    tiers = (
        tuple(DelayTier(n, f"{prefix}tasks.delay.{n}s") for n in sorted(set(delay_tiers)))
        if delay_mode == "ttl"
        else ()
    )
    bindings = _bindings(work_queues, starts, work_x, delay_x, dlx, dlq, tiers, delay_mode)
    return Topology(
        work_exchange=work_x,
        dead_letter_exchange=dlx,
        dead_letter_queue=dlq,
        parking_queue=parking,
        events_exchange=events_x,
        work_queues=work_queues,
        exchanges=(
            ExchangeSpec(work_x, "direct"),
            ExchangeSpec(dlx, "fanout"),
            ExchangeSpec(events_x, "topic"),
            _delay_exchange(delay_x, delay_mode),
        ),
        queues=(
            *(QueueSpec(queue, arguments=work_args) for wq in work_queues for queue in wq.queues),
            QueueSpec(dlq, arguments=_frozen({"x-queue-type": "quorum"})),
            QueueSpec(parking, arguments=_frozen({"x-queue-type": "quorum"})),
            *(_tier_queue(tier, work_x) for tier in tiers),
            QueueSpec(
                f"{prefix}{SELECTORS_STREAM}",
                arguments=_frozen({"x-queue-type": "stream", "x-max-age": "7D"}),
            ),
        ),
        bindings=bindings,
        delay_mode="plugin" if delay_mode == "plugin" else "ttl",
        delay_exchange=delay_x,
        delay_tiers=tiers,
        priority_levels=priority_levels,
        max_priority=max_priority,
        prefix=prefix,
        work_queue_arguments=work_args,
        selectors_stream=f"{prefix}{SELECTORS_STREAM}",
    )


def _check_arguments(delay_mode: str, delivery_limit: int, priority_levels: int, max_priority: int) -> None:
    if delay_mode not in ("ttl", "plugin"):
        raise ValueError(f"delay_mode must be 'ttl' or 'plugin', got {delay_mode!r}")
    if delivery_limit < 1:
        raise ValueError(f"delivery_limit must be >= 1, got {delivery_limit}")
    if not 1 <= priority_levels <= max_priority + 1:
        raise ValueError(f"priority_levels must be between 1 and {max_priority + 1}, got {priority_levels}")


def _tier_queue(tier: DelayTier, work_exchange: str) -> QueueSpec:
    """A TTL tier: holds a message ``tier.seconds``, then dead-letters it back to the work exchange."""
    return QueueSpec(
        tier.queue,
        arguments=_frozen(
            {
                "x-queue-type": "quorum",
                "x-message-ttl": tier.seconds * 1000,
                # no x-dead-letter-routing-key: the message keeps its own, which brings it
                # back to its group and priority level
                "x-dead-letter-exchange": work_exchange,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        ),
    )


def _work_queues(
    queue_groups: Mapping[str, Sequence[str]], prefix: str, starts: Sequence[int]
) -> tuple[WorkQueue, ...]:
    """One ``WorkQueue`` per group: a queue per priority band, and the task types routed there."""
    return tuple(
        WorkQueue(
            group=group,
            queues=tuple(work_queue_name(group, prefix, start) for start in starts),
            task_types=tuple(sorted(types)),
        )
        for group, types in sorted(queue_groups.items())
    )


def _delay_exchange(name: str, delay_mode: str) -> ExchangeSpec:
    if delay_mode == "plugin":
        return ExchangeSpec(name, "x-delayed-message", arguments=_frozen({"x-delayed-type": "direct"}))
    return ExchangeSpec(name, "headers")


def _bindings(
    work_queues: Sequence[WorkQueue],
    starts: Sequence[int],
    work_x: str,
    delay_x: str,
    dlx: str,
    dlq: str,
    tiers: Sequence[DelayTier],
    delay_mode: str,
) -> tuple[BindingSpec, ...]:
    """Task type (and priority level) to its queue, on the work exchange and, in plugin mode, the
    delay exchange; delay tiers by header; the DLX to the DLQ."""
    level_routes = tuple(
        (queue, level_routing_key(task_type, start))
        for wq in work_queues
        for start, queue in zip(starts, wq.queues, strict=True)
        for task_type in wq.task_types
    )
    return (
        *(BindingSpec(work_x, queue, key) for queue, key in level_routes),
        *(BindingSpec(delay_x, queue, key) for queue, key in level_routes if delay_mode == "plugin"),
        *(
            BindingSpec(delay_x, tier.queue, "", _frozen({"x-match": "all", tier.header: tier.value}))
            for tier in tiers
        ),
        BindingSpec(dlx, dlq, ""),
    )


def _work_queue_arguments(dlx: str, delivery_limit: int) -> Mapping[str, object]:
    return _frozen(
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
            "x-delivery-limit": delivery_limit,
        }
    )
