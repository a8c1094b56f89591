"""Every metric the platform exposes, on one registry that is passed in (no globals).

Task ids never become labels: series are per task type (and status, reason, subscriber,
route), so their number stays bounded. Gauges carry a ``multiprocess_mode`` for when the API
runs several processes (``API_PROCESSES``; prometheus-client's multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from taskplatform.models import TERMINAL, TaskStatus

#: Seconds: from milliseconds (a no-op task) to ten minutes (a long report).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds from submission to the first start: a few milliseconds to an hour of backlog.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds an API request takes.
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


#: Why tasks die, as the platform names it; anything else (a reason from a foreign message's
#: header, say) is counted as "other", so the series stay bounded.
DEAD_LETTER_REASONS = frozenset(
    {
        "non-retryable",
        "permanent-failure",
        "attempts-exhausted",
        "lease-expired",
        "unknown-task-type",
        "unknown-task",
        "missing-header",
        "bad-json",
        "invalid-body",
        "header-mismatch",
        "rejected",
        "delivery_limit",
        "expired",
        "maxlen",
    }
)
#: Why the DLQ consumer parks a dead message it cannot store (the label values of
#: ``taskplatform_dead_letters_parked_total``; see taskplatform/deadletters/consumer.py).
PARK_REASONS = ("store-refused", "capture-failed")
#: HTTP methods counted by name; any other token is "OTHER".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The statuses ``tasks_finished`` counts: the terminal ones but FAILED, which DEAD_LETTER follows.
FINAL_STATUSES = tuple(sorted(s.value for s in TERMINAL if s is not TaskStatus.FAILED))


def reason_label(reason: str | None) -> str:
    """``reason`` if the platform knows it, else ``other``."""
    return reason if reason in DEAD_LETTER_REASONS else "other"


def method_label(method: str) -> str:
    """``method`` if standard, else ``OTHER``."""
    return method if method in HTTP_METHODS else "OTHER"


class Metrics:
    """The platform's metrics on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tasks_submitted = Counter(
            "taskplatform_tasks_submitted", "Tasks stored (sub-tasks included).", ["task_type"], registry=r
        )
        self.tasks_finished = Counter(
            "taskplatform_tasks_finished",
            "Tasks that reached a final status: COMPLETED, COMPLETED_WITH_ERRORS, CANCELLED, DEAD_LETTER.",
            ["task_type", "status"],
            registry=r,
        )
        self.task_duration = Histogram(
            "taskplatform_task_duration_seconds",
            "Per finished task: from the start of its last attempt to its final status.",
            ["task_type", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.task_queue_wait = Histogram(
            "taskplatform_task_queue_wait_seconds",
            "Per task: from submission to the start of its first attempt.",
            ["task_type"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.tasks_in_progress = Gauge(
            "taskplatform_tasks_in_progress",
            "Attempts running in this process (claimed, not settled yet).",
            ["task_type"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.task_retries = Counter(
            "taskplatform_task_retries",
            "Attempts that failed and were scheduled again.",
            ["task_type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "taskplatform_dead_letters",
            "Tasks moved to the dead letters, by why.",
            ["task_type", "reason"],
            registry=r,
        )
        self.dead_letters_parked = Counter(
            "taskplatform_dead_letters_parked",
            "Dead messages the store kept refusing, moved to the parking queue (tasks.dlq.parking).",
            ["reason"],
            registry=r,
        )
        for reason in PARK_REASONS:  # at zero from the start
            self.dead_letters_parked.labels(reason)
        self.publish_failures = Counter(
            "taskplatform_publish_failures",
            "Failed publish attempts of task messages (each left to a retry or the outbox relay).",
            ["reason"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "taskplatform_outbox_pending",
            "Tasks whose message still waits to be published.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.outbox_oldest_pending_age = Gauge(
            "taskplatform_outbox_oldest_pending_age_seconds",
            "Age of the oldest task whose message still waits to be published (0 when none).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.heartbeat = Gauge(
            "taskplatform_heartbeat_timestamp_seconds",
            "When this process's event loop last ran its heartbeat, every 5 s (stale: the loop hangs).",
            registry=r,
            multiprocess_mode="livemin",  # several API processes: the stalest one shows
        )
        self.dead_letters_pending = Gauge(
            "taskplatform_dead_letters_pending",
            "Dead-letter records waiting for an operator.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.oldest_queued_age = Gauge(
            "taskplatform_oldest_queued_task_age_seconds",
            "Age of the oldest QUEUED task (0 when none waits).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.store_clock_offset = Gauge(
            "taskplatform_store_clock_offset_seconds",
            "The store's clock minus this process's, as last measured (leases use the store's clock).",
            registry=r,
            multiprocess_mode="liveall",  # one series per API process: each has its own offset
        )
        self.event_subscriber_errors = Counter(
            "taskplatform_event_subscriber_errors",
            "Batches of lifecycle events an observer failed on.",
            ["subscriber"],
            registry=r,
        )
        self.event_observer_dropped = Counter(
            "taskplatform_event_observer_dropped",
            "Lifecycle events an observer never got: it stalled with a full buffer, oldest dropped.",
            ["subscriber"],
            registry=r,
        )
        self.events_bridged = Counter(
            "taskplatform_events_bridged",
            "Lifecycle events the external bridge handled, by outcome: published (confirmed), "
            "failed (a publish attempt not confirmed, retried), abandoned (unconfirmed at close), "
            "unencodable (skipped).",
            ["outcome"],
            registry=r,
        )
        self.api_requests = Counter(
            "taskplatform_api_requests",
            "HTTP requests answered, by route template.",
            ["method", "route", "status"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "taskplatform_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route"],
            buckets=API_BUCKETS,
            registry=r,
        )

    def prepare(self, task_types: list[str]) -> None:
        """Create the series of the known task types at zero, so a first increment shows in
        ``rate()`` and ``increase()`` instead of being the series' first sample."""
        for task_type in task_types:
            self.tasks_submitted.labels(task_type)
            self.task_retries.labels(task_type)
            for status in FINAL_STATUSES:
                self.tasks_finished.labels(task_type, status)

    def exposed_names(self) -> set[str]:
        """The metric names a scrape shows (counters with ``_total``; histograms by their base
        name): what dashboards and alerts may use."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
        return names
