"""The worker's settings in one frozen value, so its parts take one argument instead of a dozen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from taskplatform.retry import RetryPolicy
from taskplatform.settings import PlatformSettings


@dataclass(frozen=True)
class WorkerConfig:
    """What ``TaskConsumer``, ``Claimer``, ``Settler`` and ``AttemptRunner`` are tuned by.

    ``store_hold``: how long a store outage is waited out (claims held, writes retried) before a
    delivery is handed back; ``store_backoff``: the first wait between tries.
    """

    node_id: str
    #: Where a delivery the worker refuses is published; required: with "" a refused copy would go to
    #: the default exchange under the delivery's routing key, not to the dead-letter queue.
    dead_letter_exchange: str
    prefetch: int = 32
    default_timeout: float = 300.0
    lease_seconds: float = 60.0
    default_policy: RetryPolicy = field(default_factory=RetryPolicy)
    store_backoff: float = 1.0
    store_hold: float = 300.0
    cancel_poll: float = 1.0
    cancel_grace: float = 2.0
    progress_interval: float = 1.0
    priority_hold: float = 60.0
    rate_limit_hold: float = 1.0
    node_queue_expires: float = 7 * 24 * 3600.0
    #: This worker's labels (``WORKER_LABELS``): it consumes the queues of the selectors they match.
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Attempts running at once at most, all groups together (None: ``prefetch`` per group), and
    #: per task type (``WORKER_MAX_CONCURRENCY``, ``WORKER_TYPE_CONCURRENCY``).
    max_concurrency: int | None = None
    type_concurrency: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: PlatformSettings, *, dead_letter_exchange: str) -> WorkerConfig:
        return cls(
            node_id=settings.node_id,
            prefetch=settings.prefetch,
            default_timeout=settings.task_timeout_seconds,
            lease_seconds=settings.lease_seconds,
            default_policy=settings.default_retry_policy(),
            dead_letter_exchange=dead_letter_exchange,
            store_hold=settings.store_outage_hold_seconds,
            cancel_poll=settings.cancel_poll_seconds,
            cancel_grace=settings.cancel_grace_seconds,
            progress_interval=settings.progress_interval_seconds,
            priority_hold=settings.priority_hold_seconds,
            rate_limit_hold=settings.rate_limit_hold_seconds,
            node_queue_expires=settings.node_queue_expires_seconds,
            labels=dict(settings.worker_labels),
            max_concurrency=settings.worker_max_concurrency or None,
            type_concurrency=dict(settings.worker_type_concurrency),
        )
