"""Platform configuration: one settings object, read from the environment on demand."""

from __future__ import annotations

import os
import re
import socket
import uuid
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskplatform.events.models import EventType
from taskplatform.models.target import NODE_ID_MAX, NODE_ID_PATTERN
from taskplatform.models.task import MAX_PRIORITY
from taskplatform.ratelimit.rates import Rate
from taskplatform.retry import RetryPolicy
from taskplatform.settings_api import ApiSettings
from taskplatform.settings_worker import WorkerSettings
from taskplatform.store import DEFAULT_MAX_CONNECTIONS, MIN_MAX_CONNECTIONS

DEFAULT_STORE_URL = "sqlite+aiosqlite:///var/taskplatform.db"


_QUERY_SECRET = re.compile(r"(?i)([?&;](?:password|passwd|pwd|secret|token)=)[^&;#]*")


def redact_url(url: str) -> str:
    """``url`` fit for a log line or an error: the password masked (``user:***@host``), as are
    ``password=`` / ``token=`` query values. Also masks what only looks like a URL (no ``://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:  # the last @: a password may hold one unescaped
        credentials, host = rest.rsplit("@", 1)
        user, colon, _ = credentials.partition(":")
        rest = f"{user}:***@{host}" if colon else f"{credentials}@{host}"
    return _QUERY_SECRET.sub(r"\1***", f"{scheme}{sep}{rest}")


def default_node_id() -> str:
    """A node id unique per process: host, pid and a short random suffix (the host name's
    characters outside printable ASCII replaced, so it always makes a valid node id)."""
    host = re.sub(r"[^!-~]", "-", socket.gethostname())[:160] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class PlatformSettings(WorkerSettings, ApiSettings, BaseSettings):
    """Every knob of the platform. Environment prefix ``TASKPLATFORM_``.

    Nothing is read at import time: build one with ``PlatformSettings()`` where the
    process starts and pass it down.
    """

    # hide_input_in_errors: a refused URL (or secret) must not be echoed by ValidationError.
    model_config = SettingsConfigDict(
        env_prefix="TASKPLATFORM_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    # connections and identity
    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL (`amqp://` or `amqps://`)."
    )
    store_url: str = Field(
        default=DEFAULT_STORE_URL,
        description="The task store: `sqlite+aiosqlite:///path`, `postgresql+asyncpg://user@host/db`, "
        "`mongodb://host/db`, or `memory://` (in-process, for tests; `memory://name` shares one dataset).",
    )
    store_auto_migrate: bool = Field(
        default=True,
        description="Run the Alembic migrations (SQL) or create the indexes (MongoDB) at start-up.",
    )
    store_max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS,
        ge=MIN_MAX_CONNECTIONS,
        description="Store connections one process holds at most, all its pools together (PostgreSQL: "
        "SQLAlchemy's and the fast path's; MongoDB: `maxPoolSize`, per server); calls beyond it wait up to "
        "30 s for a free one. Size it so processes × this + headroom ≤ the server's `max_connections`.",
    )
    node_id: str = Field(
        default_factory=default_node_id,
        min_length=1,
        max_length=NODE_ID_MAX,
        pattern=NODE_ID_PATTERN,
        description="This process's identity in leases, a task's `execution_node_id` and the fleet registry; "
        "tasks aimed at a node name it, so give a worker they are aimed at one that survives restarts "
        "(the default holds the pid). 1 to 200 printable ASCII characters without spaces (it names the "
        "node's queue).",
    )

    # retries (defaults for executables without their own RetryPolicy)
    retry_max_attempts: int = Field(default=3, ge=1, description="Attempts a task gets in all.")
    retry_initial_delay_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Delay before the first retry; later delays grow exponentially from it.",
    )
    retry_max_delay_seconds: float = Field(default=300.0, ge=0, description="Longest delay between retries.")
    retry_jitter_seconds: float = Field(default=0.5, ge=0, description="Random delay added to each retry.")

    # retention
    task_retention_seconds: float = Field(
        default=7 * 86400.0,
        ge=0,
        description="Seconds a finished task (COMPLETED, COMPLETED_WITH_ERRORS, CANCELLED) is kept; 0 keeps "
        "them for ever. MongoDB: a TTL index too; all stores: the cleanup pass of every API and worker.",
    )
    audit_retention_seconds: float = Field(
        default=90 * 86400.0,
        ge=0,
        description="Seconds an audit log entry is kept (90 days); 0 keeps them for ever. Deleted by the "
        "cleanup pass of every API and worker.",
    )
    retention_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often the cleanup pass looks for finished tasks past their retention.",
    )

    # reaper (RUNNING tasks whose worker vanished)
    reaper_enabled: bool = Field(
        default=True, description="Run the reaper and the retention cleanup in this process."
    )
    reaper_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often to look for attempts whose worker vanished."
    )
    reaper_grace_seconds: float = Field(
        default=5.0, ge=0, description="How long past its lease an attempt is left before it is reaped."
    )
    parent_reconcile_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A parent waiting this long without a roll-up is recounted from its children.",
    )

    # memory
    memory_trim_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How often each process gives the C allocator's wholly free pages back to the system "
            "(glibc's malloc_trim), so resident memory follows the live heap instead of its peaks; "
            "0 turns it off."
        ),
    )

    # the store's clock (leases are written and compared in it)
    clock_sync_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often each process measures its clock's offset to the store's again (and at start).",
    )
    clock_skew_warn_seconds: float = Field(
        default=2.0,
        gt=0,
        description="A WARNING is logged when this process's clock is further than this off the store's.",
    )

    # dead letters
    dlq_consumer_enabled: bool = Field(
        default=True,
        description="Run the DLQ consumer in workers: it stores dead messages for the DeadLetter API.",
    )
    dlq_replay_rate: float = Field(
        default=50.0,
        gt=0,
        description="Default pace of a bulk replay, tasks per second (a request may ask for less or more).",
    )
    dlq_max_capture_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries the DLQ consumer gives a dead message the store answers for but refuses, before "
        "parking it in `tasks.dlq.parking` (tries while the store is unreachable don't count).",
    )
    dlq_capture_backoff_seconds: float = Field(
        default=1.0,
        gt=0,
        description="The DLQ consumer's first wait between tries of a dead message; doubles, up to 30 s.",
    )

    # events
    events_bridge_enabled: bool = Field(
        default=True, description="Publish lifecycle events to `tasks.events.exchange` (the external bridge)."
    )
    events_bridge_types: list[EventType] | None = Field(
        default=None,
        description='Event types the bridge publishes, a JSON list such as `["completed","dead_lettered"]`; '
        "unset: all. Each costs one confirmed publish (docs/benchmarks.md).",
    )
    event_observer_buffer: int = Field(
        default=10_000,
        ge=1,
        description="Events buffered per observer; a full buffer makes producers wait, and drops the oldest "
        "once the observer has been stuck on one batch for 2 s (counted).",
    )
    progress_interval_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Least seconds between two progress writes (and events) of one attempt; the latest value "
        "wins, the last one is written with the completion.",
    )

    # topology
    topology_prefix: str = Field(
        default="", description="Prefix for every exchange and queue name (isolation on a shared broker)."
    )
    delivery_limit: int = Field(
        default=5, ge=1, description="Quorum-queue `x-delivery-limit` before a message is dead-lettered."
    )
    delay_mode: Literal["ttl", "plugin"] = Field(
        default="ttl",
        description="Retry delays through TTL tier queues, or `plugin` (needs "
        "rabbitmq_delayed_message_exchange).",
    )
    priority_levels: int = Field(
        default=MAX_PRIORITY + 1,
        ge=1,
        le=MAX_PRIORITY + 1,
        description="Quorum queues per queue group, one per priority band: 10 gives each priority 0-9 its "
        "own; 1 turns priorities off.",
    )
    priority_hold_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a delivered message may wait in a busy worker behind higher priorities before "
        "it is handed back to its queue (well under RabbitMQ's consumer timeout).",
    )

    # rate limits
    rate_limit_backend: Literal["store", "memory"] = Field(
        default="store",
        description="Where executables' `rate_limits` are counted: `store` (shared by every worker of the "
        "store) or `memory` (each process on its own: N processes allow N times the rate).",
    )
    rate_limit_hold_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Longest a worker holds a delivery waiting for its rate-limit slot; a longer wait goes "
        "round the delay path (acked, the store untouched, no attempt counted); at least 0.5 in effect.",
    )
    api_submit_rate: Rate | None = Field(
        default=None,
        description="Submissions the API accepts per user (token subject, or client address without "
        "authentication), e.g. `50/s`; unset: unlimited. More answer 429 with Retry-After.",
    )
    api_submit_burst: int = Field(
        default=20,
        ge=1,
        description="Tasks a user may create at once above `api_submit_rate` (a batch counts its items "
        "plus one): the largest request a caller may make.",
    )
    api_rate_limit_backend: Literal["memory", "store"] = Field(
        default="memory",
        description="Where the API counts submissions: `memory` (per API process) or `store` (all of them).",
    )

    # publishing and outbox
    publish_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a task message's publish waits for the broker's confirm."
    )
    publish_max_in_flight: int = Field(
        default=128,
        ge=1,
        le=65535,
        description="Messages one process has in flight (sent, not yet confirmed) at once: task messages "
        "(and worker events), and task lifecycle events, each; more wait their turn, so a large batch is "
        "not timed out by its own queue (a publish still gives up within its tries' time-outs).",
    )
    publish_retry_attempts: int = Field(
        default=3, ge=1, description="Tries of a publish before it is left to the outbox relay."
    )
    outbox_relay_enabled: bool = Field(
        default=True, description="Run the outbox relay (republishes what the broker missed) in this process."
    )
    outbox_interval_seconds: float = Field(default=1.0, gt=0, description="The outbox relay's period.")
    outbox_grace_seconds: float = Field(
        default=10.0, ge=0, description="Age of a pending outbox entry before the relay republishes it."
    )
    outbox_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a relay holds the outbox entries it took (others skip them).",
    )
    outbox_batch_size: int = Field(default=200, ge=1, description="Outbox entries one relay pass takes.")
    outbox_max_backoff_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait before the relay tries an entry again whose publishes keep failing "
        "(the wait doubles from the relay's period with each failure).",
    )

    # metrics
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Workers and `taskplatform grpc` serve Prometheus metrics on this port; the API serves "
        "/metrics on its own port.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="The address a worker's metrics server binds; `0.0.0.0` when a scraper on another host "
        "or container needs it.",
    )
    metrics_sample_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often the outbox backlog, the oldest queued task and pending dead letters are "
        "sampled into gauges.",
    )

    # process and logging
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="The event loop: `auto` takes uvloop when it is installed."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Logging level (any case)."
    )
    log_json: bool = Field(
        default=False,
        description="One JSON object per log line; lines logged while an attempt runs carry its `task_id`, "
        "`task_type`, `attempt` and `node_id`.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_submit_rate", mode="before")
    @classmethod
    def _parse_rate(cls, value: object) -> object:
        if value is None or value == "":
            return None
        return Rate.parse(value) if isinstance(value, str) else value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError(f"amqp_url must start with amqp:// or amqps://, got {redact_url(value)!r}")
        return value

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                "store_url must be a URL such as sqlite+aiosqlite:///path, postgresql+asyncpg://user@host/db "
                f"or mongodb://host/db, got {redact_url(value)!r}"
            )
        return value

    def default_retry_policy(self) -> RetryPolicy:
        """The retry policy of executables that declare none."""
        return RetryPolicy(
            max_attempts=self.retry_max_attempts,
            initial_delay=self.retry_initial_delay_seconds,
            max_delay=self.retry_max_delay_seconds,
            jitter=self.retry_jitter_seconds,
        )

    @property
    def client_api_url(self) -> str:
        """Where clients (CLI, Python client) reach the API."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::") else self.api_host  # noqa: S104
        return f"http://{host}:{self.api_port}"
