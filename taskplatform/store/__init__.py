"""Durable task state: the ports (``ports``) and their backends, chosen by URL."""

from __future__ import annotations

from taskplatform.errors import ConfigError
from taskplatform.store.base import (
    BaseTaskStore,
    Guard,
    InvalidCursorError,
    TaskFilter,
    TaskPage,
    TaskStore,
)
from taskplatform.store.deadletters import (
    AuditPage,
    DeadLetterCounts,
    DeadLetterFilter,
    DeadLetterPage,
    UpsertOutcome,
)
from taskplatform.store.ports import (
    AttemptOutcomes,
    AuditLog,
    Cancellation,
    DeadLetters,
    LostWorkers,
    Outbox,
    ParentRollups,
    RateLimits,
    Retention,
    StoreClock,
    StoreLifecycle,
    TaskClaims,
    TaskCreation,
    TaskReads,
    TaskRevisions,
)

__all__ = [
    "AttemptOutcomes",
    "AuditLog",
    "AuditPage",
    "BaseTaskStore",
    "Cancellation",
    "DeadLetterCounts",
    "DeadLetterFilter",
    "DeadLetterPage",
    "DeadLetters",
    "Guard",
    "InvalidCursorError",
    "LostWorkers",
    "Outbox",
    "ParentRollups",
    "RateLimits",
    "Retention",
    "StoreClock",
    "StoreLifecycle",
    "TaskClaims",
    "TaskRevisions",
    "TaskCreation",
    "TaskFilter",
    "TaskPage",
    "TaskReads",
    "TaskStore",
    "UpsertOutcome",
    "create_store",
]


def create_store(
    url: str, *, auto_migrate: bool = True, retention_seconds: float | None = None
) -> BaseTaskStore:
    """The backend for ``url``: ``sqlite+aiosqlite://``, ``postgresql+asyncpg://``, ``mongodb://``, or
    ``memory://`` (this process only, for tests: ``memory://`` private to each store, ``memory://name``
    shared by every store of that name in this process).

    ``retention_seconds`` (None: keep finished tasks) makes MongoDB keep a TTL index; SQL
    stores are purged by the runtime's cleanup pass (``purge_finished``) instead.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        from taskplatform.store.sql import SqlTaskStore

        return SqlTaskStore(url, auto_migrate=auto_migrate)
    if scheme in ("mongodb", "mongodb+srv"):
        from taskplatform.store.mongo import MongoTaskStore

        return MongoTaskStore(url, retention_seconds=retention_seconds)
    if scheme == "memory":
        from taskplatform.store.memory import MemoryTaskStore

        return MemoryTaskStore(url)
    raise ConfigError(
        f"unsupported store URL scheme {scheme or url!r}; use sqlite+aiosqlite:///path, "
        "postgresql+asyncpg://user@host/db, mongodb://host/db or memory://"
    )
