"""Every metric the platform exposes, on one registry that is passed in (no globals).

Task ids never become labels: series are per task type (and status, reason, subscriber,
route), so their number stays bounded. Every label set drawn from a fixed set is created at
zero, so ``rate()`` and ``increase()`` see a series' first increment and panels show 0, not "No
data". Gauges carry a ``multiprocess_mode`` for when the API runs several processes
(``API_PROCESSES``; prometheus-client's multiprocess mode). Beside the platform's own metrics,
the registry holds prometheus-client's process (``process_*``), platform (``python_info``) and
garbage-collector (``python_gc_*``) collectors; see ``exposition.py`` for multiprocess mode.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from taskplatform.models import TERMINAL, TaskStatus
from taskplatform.models.reasons import DeadLetterReason

#: Seconds: from milliseconds (a no-op task) to ten minutes (a long report).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds from submission to the first start: a few milliseconds to an hour of backlog.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds an API request takes.
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


#: Why tasks and messages die, as the platform and RabbitMQ name it (``DeadLetterReason``); anything
#: else (a reason from a foreign message's header, say) is counted as "other", so the series stay
#: bounded.
DEAD_LETTER_REASONS = frozenset(reason.value for reason in DeadLetterReason)
#: The ``reason`` label of dead letters whose reason the platform does not know.
OTHER_REASON = "other"
#: The ``task_type`` label of dead messages that name no task type this process knows (a
#: malformed message, or one of a type no executable is registered for): their own text could
#: mint any number of series.
UNKNOWN_TASK_TYPE = "unknown"
#: Why the DLQ consumer parks a dead message it cannot store (the label values of
#: ``taskplatform_dead_letters_parked_total``; see taskplatform/deadletters/consumer.py).
PARK_REASONS = ("store-refused", "capture-failed")
#: Why a publish failed (the ``reason`` label of ``taskplatform_publish_failures_total``; see
#: ``TaskPublisher.count_failure`` in taskplatform/messaging/publisher.py).
PUBLISH_FAILURE_REASONS = ("not_connected", "unroutable", "refused", "unavailable")
#: What the external event bridge did with an event (``taskplatform_events_bridged_total``).
BRIDGE_OUTCOMES = ("published", "failed", "abandoned", "unencodable")
#: The registry states a worker moves to that are counted (``taskplatform_worker_transitions_total``).
WORKER_TRANSITIONS = ("online", "offline", "stopped")
#: What ``taskplatform_history_unstored_total`` counts.
HISTORY_KINDS = ("attempt", "audit")
#: HTTP methods counted by name; any other token is "OTHER".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The statuses ``tasks_finished`` counts: the terminal ones but FAILED, which DEAD_LETTER follows.
FINAL_STATUSES = tuple(sorted(s.value for s in TERMINAL if s is not TaskStatus.FAILED))


def reason_label(reason: str | None) -> str:
    """``reason`` if the platform knows it, else ``other``."""
    return reason if reason in DEAD_LETTER_REASONS else OTHER_REASON


def method_label(method: str) -> str:
    """``method`` if standard, else ``OTHER``."""
    return method if method in HTTP_METHODS else "OTHER"


class Metrics:
    """The platform's metrics on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        #: Task types whose series exist from the start (``prepare``).
        self.task_types: frozenset[str] = frozenset()
        # CPU, memory, file descriptors, start time; the interpreter; garbage collections. A
        # fresh registry has none of prometheus-client's default collectors, so they are added.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)  # registers itself on CPython only (gc.get_stats)
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
            "Dead letters, by task type and why: tasks marked DEAD_LETTER, and dead messages no "
            "task died with (malformed, of an unknown task or type), counted once when first stored.",
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
        for reason in PUBLISH_FAILURE_REASONS:
            self.publish_failures.labels(reason)
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
        for outcome in BRIDGE_OUTCOMES:
            self.events_bridged.labels(outcome)
        self.worker_transitions = Counter(
            "taskplatform_worker_transitions",
            "Workers whose registry state changed, by the state entered: online (registered, or back "
            "after being offline), offline (missed 3 heartbeats; counted by the process whose sweep "
            "found it), stopped (a clean exit).",
            ["to"],
            registry=r,
        )
        for state in WORKER_TRANSITIONS:  # at zero from the start
            self.worker_transitions.labels(state)
        self.history_unstored = Counter(
            "taskplatform_history_unstored",
            "History entries that could not be stored (the store failed); what they record stands: "
            "attempt (a task's attempt record), audit (an audit-log entry).",
            ["kind"],
            registry=r,
        )
        for kind in HISTORY_KINDS:  # at zero from the start
            self.history_unstored.labels(kind)
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
        # the conventional gRPC server series (grpc-ecosystem/go-grpc-prometheus names and labels)
        self.grpc_started = Counter(
            "grpc_server_started",
            "gRPC calls started on this server, by method.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "gRPC calls ended on this server, by method and status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from a gRPC call's start to its end (a stream: its whole life), by method.",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=API_BUCKETS,
            registry=r,
        )

    def prepare(self, task_types: Iterable[str]) -> None:
        """Create the series of the known task types at zero, so a first increment shows in
        ``rate()`` and ``increase()`` instead of being the series' first sample: submissions,
        retries, attempts in progress, outcomes and their durations, queue waits, and dead
        letters by every reason (also for dead messages of no known task type)."""
        self.task_types = self.task_types | frozenset(task_types)
        reasons = sorted(DEAD_LETTER_REASONS | {OTHER_REASON})
        for task_type in sorted(self.task_types):
            self.tasks_submitted.labels(task_type)
            self.task_retries.labels(task_type)
            self.tasks_in_progress.labels(task_type)
            self.task_queue_wait.labels(task_type)
            for status in FINAL_STATUSES:
                self.tasks_finished.labels(task_type, status)
                self.task_duration.labels(task_type, status)
        for task_type in (*sorted(self.task_types), UNKNOWN_TASK_TYPE):
            for reason in reasons:
                self.dead_letters.labels(task_type, reason)

    def task_type_label(self, task_type: str | None) -> str:
        """``task_type`` if it is one of the prepared ones, else ``unknown``."""
        return task_type if task_type in self.task_types else UNKNOWN_TASK_TYPE

    def count_dead_message(self, task_type: str | None, reason: str | None) -> None:
        """Count a dead message no task died with (its task type and reason bounded)."""
        self.dead_letters.labels(self.task_type_label(task_type), reason_label(reason)).inc()

    def exposed_names(self) -> set[str]:
        """The metric names a scrape shows (counters with ``_total``; histograms by their base
        name): what dashboards and alerts may use, the process and Python ones included."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
        return names
