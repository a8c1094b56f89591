"""Platform configuration: one settings object, read from the environment on demand."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskplatform.events.models import EventType
from taskplatform.models.task import MAX_PRIORITY
from taskplatform.ratelimit.rates import Rate
from taskplatform.retry import RetryPolicy

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
    """A node id unique per process: host, pid and a short random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class PlatformSettings(BaseSettings):
    """Every knob of the platform. Environment prefix ``TASKPLATFORM_``.

    Nothing is read at import time: build one with ``PlatformSettings()`` where the
    process starts and pass it down.
    """

    # hide_input_in_errors: a refused URL (or secret) must not be echoed by ValidationError.
    model_config = SettingsConfigDict(
        env_prefix="TASKPLATFORM_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    store_url: str = DEFAULT_STORE_URL
    store_auto_migrate: bool = True
    node_id: str = Field(default_factory=default_node_id)

    # worker
    prefetch: int = Field(default=32, ge=1, le=65535)
    task_timeout_seconds: float = Field(default=300.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # how long a worker holds a message and retries while the store is unreachable (well
    # under RabbitMQ's consumer timeout, 30 min by default)
    store_outage_hold_seconds: float = Field(default=300.0, gt=0)
    cancel_poll_seconds: float = Field(default=1.0, gt=0)
    cancel_grace_seconds: float = Field(default=2.0, ge=0)
    # modules whose executables to register besides entry points: 'a.tasks,b.tasks' or a JSON list
    executor_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    load_entry_points: bool = True

    # retries (defaults for executables without their own RetryPolicy)
    retry_max_attempts: int = Field(default=3, ge=1)
    retry_initial_delay_seconds: float = Field(default=1.0, ge=0)
    retry_max_delay_seconds: float = Field(default=300.0, ge=0)
    retry_jitter_seconds: float = Field(default=0.5, ge=0)

    # retention
    #: Seconds a finished task is kept (7 days); 0 keeps them for ever. MongoDB: a TTL index;
    #: SQL: the cleanup pass of every API and worker process.
    task_retention_seconds: float = Field(default=7 * 86400.0, ge=0)
    #: How often the cleanup pass looks for finished tasks past their retention.
    retention_interval_seconds: float = Field(default=300.0, gt=0)

    # reaper (RUNNING tasks whose worker vanished)
    reaper_enabled: bool = True
    reaper_interval_seconds: float = Field(default=10.0, gt=0)
    reaper_grace_seconds: float = Field(default=5.0, ge=0)
    #: A parent waiting this long without a roll-up is recounted from its children.
    parent_reconcile_seconds: float = Field(default=60.0, gt=0)

    # the store's clock: leases, lapses and takeovers are written and compared in it
    #: How often each process measures its clock's offset to the store's again (and at start).
    clock_sync_seconds: float = Field(default=60.0, gt=0)
    #: A WARNING is logged when this process's clock is further than this off the store's.
    clock_skew_warn_seconds: float = Field(default=2.0, gt=0)

    # dead letters
    #: Run the DLQ consumer in workers (it stores dead messages for the DeadLetter API).
    dlq_consumer_enabled: bool = True
    #: Default pace of a bulk replay, tasks per second (a request may ask for less or more).
    dlq_replay_rate: float = Field(default=50.0, gt=0)
    #: Tries the DLQ consumer gives a dead message the store answers for but refuses to store,
    #: before it parks it in ``tasks.dlq.parking`` (tries while the store is unreachable don't count).
    dlq_max_capture_attempts: int = Field(default=5, ge=1)
    #: The DLQ consumer's first wait between tries of a dead message; doubles, up to 30 s.
    dlq_capture_backoff_seconds: float = Field(default=1.0, gt=0)

    # events
    #: Publish lifecycle events to the events exchange (the external event bridge).
    events_bridge_enabled: bool = True
    #: Event types the bridge publishes (default: all). Each costs one confirmed publish.
    events_bridge_types: list[EventType] | None = None
    #: Events buffered per observer before the oldest is dropped (and counted).
    event_observer_buffer: int = Field(default=10_000, ge=1)
    #: Least seconds between two progress writes of one attempt (throttling).
    progress_interval_seconds: float = Field(default=1.0, ge=0)

    # topology
    topology_prefix: str = ""
    delivery_limit: int = Field(default=5, ge=1)
    delay_mode: Literal["ttl", "plugin"] = "ttl"
    #: Quorum queues per queue group, one per priority band (10: one per priority 0-9).
    priority_levels: int = Field(default=MAX_PRIORITY + 1, ge=1, le=MAX_PRIORITY + 1)
    #: How long a delivered message may wait in a busy worker behind higher priorities before
    #: it is handed back to its queue (kept well under RabbitMQ's consumer timeout).
    priority_hold_seconds: float = Field(default=60.0, gt=0)

    # rate limits
    #: Where executables' ``rate_limits`` are counted: ``store`` (shared by every worker of the
    #: store, exact across processes) or ``memory`` (each process on its own).
    rate_limit_backend: Literal["store", "memory"] = "store"
    #: Longest a worker holds a delivery waiting for its rate limit; a longer wait goes round the
    #: delay path (the message is acked, the slot stays reserved, no attempt is counted).
    rate_limit_hold_seconds: float = Field(default=1.0, ge=0)
    #: Submissions the API accepts per user (the token's subject; the client address without
    #: authentication), e.g. ``"50/s"``; unset: unlimited. More answer 429 with Retry-After.
    api_submit_rate: Rate | None = None
    #: Tasks a user may create at once above ``api_submit_rate`` (a batch counts its items too).
    api_submit_burst: int = Field(default=20, ge=1)
    #: Where the API counts submissions: ``memory`` (per API process) or ``store`` (all of them).
    api_rate_limit_backend: Literal["memory", "store"] = "memory"

    # publishing and outbox
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    publish_retry_attempts: int = Field(default=3, ge=1)
    outbox_relay_enabled: bool = True
    outbox_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_grace_seconds: float = Field(default=10.0, ge=0)
    outbox_lease_seconds: float = Field(default=30.0, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1)

    # authentication (the API) and the token clients send
    #: ``jwt``: every API request needs a bearer JWT; ``disabled``: none does (each request
    #: acts as an admin). ``taskplatform dev`` defaults to ``disabled``, everything else to ``jwt``.
    auth: Literal["jwt", "disabled"] = "jwt"
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    #: HS256 shared secret (at least 32 bytes); also what ``taskplatform token`` signs with.
    jwt_secret: SecretStr | None = None
    #: RS256: a PEM public key file, or a JWKS file (keys chosen by the token's ``kid``).
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    #: Required ``iss`` / ``aud`` claims; empty means not checked.
    jwt_issuer: str = "taskplatform"
    jwt_audience: str = "taskplatform"
    #: Clock skew allowed on ``exp`` / ``nbf`` / ``iat``.
    jwt_leeway_seconds: float = Field(default=30.0, ge=0)
    #: Longest a token may live: one whose ``exp`` lies further ahead (of now, or of its ``iat``)
    #: is refused, and ``taskplatform token --ttl`` mints no longer one.
    jwt_max_lifetime_seconds: float = Field(default=86400.0, gt=0)
    #: Claim holding the caller's roles (a list, or a space-separated string).
    jwt_roles_claim: str = "roles"
    #: ``/readyz`` (queue names, consumer counts) and ``/metrics`` need an operator's token too.
    #: Off by default so probes and Prometheus need no token: keep those ports on a private
    #: network, or turn this on and give Prometheus a token (DEVELOPER_GUIDE "Authentication").
    protect_ops_endpoints: bool = False
    #: Bearer token the CLI and ``TaskPlatformClient.from_settings`` send.
    token: SecretStr | None = None

    # API
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_url: str | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    #: Seconds a connection has to send a complete request head, from its opening or its previous
    #: response (also the keep-alive idle time-out); then it is closed.
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Seconds a request body has to arrive whole after its head; then 408 and the connection closes.
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Connections plus requests in progress per API process above which requests answer 503.
    api_max_connections: int = Field(default=1000, ge=1)
    #: Request body bytes one API process holds at once; a body beyond answers 503 + Retry-After.
    api_max_buffered_bytes: int = Field(default=64 * 1_048_576, ge=1024)
    #: Bytes of items one list page (tasks, children, dead letters) holds: the page ends early,
    #: with a ``next_cursor``, before the item that would pass it (a page has at least one item).
    api_max_page_bytes: int = Field(default=4 * 1_048_576, ge=1024)

    #: API processes (uvicorn workers); above 1, metrics use prometheus-client's multiprocess mode.
    api_processes: int = Field(default=1, ge=1, le=64)
    #: One INFO line per API request on the ``taskplatform.access`` logger (method, route template,
    #: status, duration, user id, client address); successful probes and scrapes at DEBUG.
    api_access_log: bool = True

    # metrics
    #: Workers serve Prometheus metrics on this port (the API serves /metrics on its own port).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: The address the worker metrics server binds: loopback unless a scraper on another host
    #: (e.g. Prometheus in another container) needs it, then ``0.0.0.0``.
    metrics_host: str = "127.0.0.1"
    #: How often the outbox backlog, the oldest queued task and pending dead letters are sampled.
    metrics_sample_seconds: float = Field(default=15.0, gt=0)

    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

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
