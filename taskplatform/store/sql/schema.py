"""The SQL schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        # asyncpg handles aware datetimes natively; only SQLite needs converting.
        return None if dialect.name == "postgresql" else super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # timestamptz comes back aware (UTC) from asyncpg; only SQLite returns naive values.
        return None if dialect.name == "postgresql" else super().result_processor(dialect, coltype)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_type() -> Any:
    """JSON, stored as JSONB on PostgreSQL."""
    return JSON().with_variant(JSONB(), "postgresql")


metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(255), nullable=True),
    Column("task_type", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("parameters", json_type(), nullable=False),
    Column("progress", json_type(), nullable=True),
    Column("result", json_type(), nullable=True),
    Column("error_info", json_type(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("retry_count", Integer, nullable=False, server_default=text("0")),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("execution_node_id", String(255), nullable=True),
    Column("parent_task_id", String(64), nullable=True),
    Column("sub_task_status_summary", json_type(), nullable=True),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("priority", SmallInteger, nullable=False, server_default=text("0")),
    Column("tags", json_type(), nullable=False),
    #: Free-form caller data (``PATCH`` may change it while the task waits).
    Column("metadata", json_type(), nullable=False, server_default=text("'{}'")),
    Column("idempotency_key", String(255), nullable=True),
    #: idempotency_scope(user_id, idempotency_key): unique, so a key names one task per user.
    Column("idempotency_scope", String(64), nullable=True),
    #: SHA-256 of the submission that created the task with its key (a reuse is compared with it).
    Column("idempotency_fingerprint", String(64), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("last_event_id", String(64), nullable=True),
    Column("awaiting_children", Boolean, nullable=False, server_default=text("false")),
    Column("replays", Integer, nullable=False, server_default=text("0")),
    #: Where the task may run (``TaskTarget``), and its node alone, for the sweep's query.
    Column("target", json_type(), nullable=True),
    Column("target_key", String(255), nullable=True),
    Column("outbox_status", String(16), nullable=False),
    Column("outbox_attempts", Integer, nullable=False, server_default=text("0")),
    Column("outbox_lease_until", UTCDateTime(), nullable=True),
    Column("outbox_lease_owner", String(255), nullable=True),
    Column("outbox_published_at", UTCDateTime(), nullable=True),
    Column("outbox_last_error", Text, nullable=True),
    Index("ix_tasks_created", "created_at", "id"),
    Index("ix_tasks_status_created", "status", "created_at"),
    Index("ix_tasks_type_created", "task_type", "created_at"),
    Index("ix_tasks_user_created", "user_id", "created_at"),
    Index("ix_tasks_parent", "parent_task_id"),
    Index("ix_tasks_completed", "completed_at"),  # retention: finished tasks past their time
    Index("ix_tasks_target_key", "target_key", "status"),  # the fleet sweep: targeted tasks waiting
    Index("ux_tasks_idempotency", "idempotency_scope", unique=True),
    Index(
        "ix_tasks_outbox_pending",
        "created_at",
        postgresql_where=text("outbox_status = 'pending'"),
        sqlite_where=text("outbox_status = 'pending'"),
    ),
)

#: The parents' roll-up ledger: where each child is counted in its parent's summary, and the
#: child version that put it there (see ``taskplatform.store.rollup``).
task_rollups = Table(
    "task_rollups",
    metadata,
    Column("child_id", String(64), primary_key=True),
    Column("parent_id", String(64), nullable=False),
    Column("bucket", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_task_rollups_parent", "parent_id"),
)

#: Rate-limit state, one row per limit key (see ``taskplatform.store.ratelimits``).
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("tat", Float, nullable=False),  # theoretical arrival time, epoch seconds
    Column("last_wait", Float, nullable=False),  # what the last reservation computed
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: Dead-letter records: the whole record as JSON (``record``) but its body, the body as bytes
#: (``body``: binary-safe, NULL on rows written before migration 0006, whose JSON holds it),
#: and the fields lists filter and sort on as real columns, all written by one statement.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("task_id", String(255), nullable=True),
    Column("task_type", String(255), nullable=True),
    Column("user_id", String(255), nullable=True),
    Column("reason", Text, nullable=False),
    Column("error_type", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("version", Integer, nullable=False),
    Column("record", json_type(), nullable=False),
    Column("body", LargeBinary(), nullable=True),
    Index("ix_dead_letters_seen", "last_seen_at", "id"),
    Index("ix_dead_letters_status_seen", "status", "last_seen_at"),
    Index("ix_dead_letters_type_seen", "task_type", "last_seen_at"),
    Index("ix_dead_letters_reason_seen", "reason", "last_seen_at"),
    Index("ix_dead_letters_user_seen", "user_id", "last_seen_at"),
    Index("ix_dead_letters_error_seen", "error_type", "last_seen_at"),
    Index("ix_dead_letters_task", "task_id"),
    Index("ix_dead_letters_first_seen", "first_seen_at"),
)

#: The operators' audit log: the whole entry as JSON (``entry``), time and who as columns.
dead_letter_audit = Table(
    "dead_letter_audit",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(32), nullable=False),
    Column("entry", json_type(), nullable=False),
    Index("ix_dead_letter_audit_at", "at", "id"),
    Index("ix_dead_letter_audit_actor", "actor", "at"),
)

#: Which dead letters each audit entry names (for the log of one record).
dead_letter_audit_targets = Table(
    "dead_letter_audit_targets",
    metadata,
    Column("audit_id", String(200), primary_key=True),
    Column("dead_letter_id", String(200), primary_key=True),
    Index("ix_dead_letter_audit_targets_dead_letter", "dead_letter_id"),
)

#: Which tasks each audit entry names (for the log of one task).
audit_task_targets = Table(
    "audit_task_targets",
    metadata,
    Column("audit_id", String(200), primary_key=True),
    Column("task_id", String(200), primary_key=True),
    Index("ix_audit_task_targets_task", "task_id"),
)

#: Every attempt of a task, as it ended (``taskplatform.models.attempt``); ``id`` is the id of
#: the event that ended it. Deleted with its task.
task_attempts = Table(
    "task_attempts",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("task_id", String(200), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("node_id", String(255), nullable=True),
    Column("host", String(255), nullable=True),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("duration_seconds", Float, nullable=True),
    Column("outcome", String(32), nullable=False),
    Column("error_type", String(255), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("retried", Boolean, nullable=False),
    Index("ix_task_attempts_task", "task_id", "ended_at"),
)

#: The worker registry, one row per worker process (see ``taskplatform.store.workers``).
#: ``label_set`` holds the labels as ``|key=value|key=value|`` (sorted by key): a label filter is
#: a substring search for ``|key=value|`` in it, in the query. ``previous_state`` is the state the
#: row had before the last beat, set by the beat's own upsert (what ``beat_worker`` returns).
workers = Table(
    "workers",
    metadata,
    Column("node_id", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("labels", json_type(), nullable=False),
    Column("label_set", Text, nullable=False),
    Column("task_types", json_type(), nullable=False),
    Column("queue_groups", json_type(), nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("running", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("heartbeat_seconds", Float, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous_state", String(16), nullable=True),
    Column("state_changed_at", UTCDateTime(), nullable=False),
    Index("ix_workers_state_expires", "state", "expires_at"),  # the sweep: present and expired
    Index("ix_workers_last_seen", "last_seen_at"),  # the prune: gone and last seen long ago
)

#: Document fields kept as JSON columns.
JSON_FIELDS = (
    "parameters",
    "progress",
    "result",
    "error_info",
    "sub_task_status_summary",
    "tags",
    "metadata",
)
#: Outbox sub-fields, flattened into ``outbox_<name>`` columns.
OUTBOX_FIELDS = ("status", "attempts", "lease_until", "lease_owner", "published_at", "last_error")
