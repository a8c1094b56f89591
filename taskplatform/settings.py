"""Platform configuration: one settings object, read from the environment on demand."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskplatform.events.models import EventType
from taskplatform.models.target import NODE_ID_MAX, NODE_ID_PATTERN
from taskplatform.models.task import MAX_PRIORITY
from taskplatform.models.worker import check_labels, parse_labels
from taskplatform.ratelimit.rates import Rate
from taskplatform.retry import RetryPolicy
from taskplatform.settings_api import ApiSettings
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


def _json_object_or_text(value: object, what: str) -> object:
    """A setting given as ``k=v,k=v`` or a JSON object: the parsed object when the text starts
    with ``{`` (ValueError naming ``what`` when it is not JSON), else the stripped text; a
    value that is not text as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text.startswith("{"):
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON object of {what}: {exc}") from None


class PlatformSettings(ApiSettings, BaseSettings):
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

    # worker
    prefetch: int = Field(
        default=32,
        ge=1,
        le=65535,
        description="Tasks a worker runs at once per queue group; each priority level's consumer may also "
        "hold this many unacked messages (up to PREFETCH × levels per group).",
    )
    task_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Per-attempt timeout of executables that set none."
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="A claim's lease; a running attempt renews it every third of this."
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="In-flight work allowed to finish on SIGTERM; what remains is given back to the queue.",
    )
    store_outage_hold_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a worker holds a message and retries its store writes while the store is "
        "unreachable (well under RabbitMQ's consumer timeout); then it hands the message back.",
    )
    cancel_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often a running attempt checks for a cancel request."
    )
    cancel_grace_seconds: float = Field(
        default=2.0, ge=0, description="How long a cancelled attempt gets to stop by itself."
    )
    executor_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules whose executables to register besides entry points: `a.tasks,b.tasks` "
        'or a JSON list `["a.tasks"]`.',
    )
    load_entry_points: bool = Field(
        default=True, description="Register the executables of the `taskplatform.executors` entry points."
    )
    worker_labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="This worker's labels in the fleet registry, what tasks may be aimed at: "
        '`region=eu,role=db` or a JSON object `{"role": "db"}`; keys and values are plain (letters, '
        "digits, `_ . -`).",
    )
    worker_max_concurrency: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Attempts this worker runs at once at most, all queue groups and aimed work together "
        "(0: no cap beyond `PREFETCH` per queue group).",
    )
    worker_type_concurrency: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Attempts of a task type this worker runs at once at most: `run_command=2,resize=4` "
        'or a JSON object `{"run_command": 2}`; each at least 1. Other types are capped by their group only.',
    )
    worker_heartbeat_seconds: float = Field(
        default=5.0,
        ge=0.5,
        le=3600,
        description="How often a worker writes its record to the fleet registry (one small write); it counts "
        "as offline after 3 intervals without one.",
    )
    worker_record_retention_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="How long the records of stopped or offline workers stay in the registry (0: for ever).",
    )
    node_queue_expires_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=1,
        le=365 * 24 * 3600.0,
        description="How long a worker node's own queue (tasks aimed at it) outlives the node: the broker "
        "deletes it once it has had no consumer this long (`x-expires`; the queue's arguments, so "
        "changing it means deleting idle node queues first).",
    )
    agent_commands_file: Path | None = Field(
        default=None,
        description="The agent's allow-list of command templates (a `.json` or `.toml` file, checked at "
        "start-up): this worker then serves `run_command` (queue group `agent`); unset: it does not.",
    )
    agent_kill_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Seconds a `run_command` process group gets between SIGTERM and SIGKILL on time-out or "
        "cancel, for templates that set no `kill_grace_seconds` (on cancel, CANCEL_GRACE_SECONDS caps it).",
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

    # metrics
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Workers serve Prometheus metrics on this port; the API serves /metrics on its own port.",
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

    @field_validator("agent_commands_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("executor_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        """A comma-separated list (``a.tasks,b.tasks``) or a JSON list (``["a.tasks"]``)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON list of module names: {exc}") from None
        return [name.strip() for name in text.split(",") if name.strip()]

    @field_validator("worker_labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: object) -> object:
        """``region=eu,role=db`` or a JSON object; checked key by key (``models.worker.check_labels``)."""
        value = _json_object_or_text(value, "labels")
        if isinstance(value, str):
            return parse_labels(value)
        if isinstance(value, dict):
            return check_labels(value)
        return value

    @field_validator("worker_type_concurrency", mode="before")
    @classmethod
    def _parse_type_caps(cls, value: object) -> object:
        """``run_command=2,resize=4`` or a JSON object; every cap a whole number of at least 1."""
        value = _json_object_or_text(value, "caps")
        if isinstance(value, str):
            caps: dict[str, object] = {}
            for item in (part.strip() for part in value.split(",") if part.strip()):
                name, sep, number = (x.strip() for x in item.partition("="))
                if not sep or not name or not number.isdigit():
                    raise ValueError(f"{item!r}: write task_type=N, e.g. run_command=2")
                caps[name] = int(number)
            value = caps
        if isinstance(value, dict):
            for name, cap in value.items():
                if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                    raise ValueError(f"the cap of {name!r} must be a whole number of at least 1, got {cap!r}")
        return value

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
