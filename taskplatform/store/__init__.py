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
    WorkerRegistry,
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
    "DEFAULT_MAX_CONNECTIONS",
    "MIN_MAX_CONNECTIONS",
    "POOL_TIMEOUT_SECONDS",
    "UpsertOutcome",
    "WorkerRegistry",
    "check_max_connections",
    "create_store",
]

#: Store connections one process holds at most, all its pools together (``STORE_MAX_CONNECTIONS``):
#: 1 API + 8 workers take 54 of PostgreSQL's default 100, leaving room for a rolling deploy's
#: extra processes, migrations and an operator's psql (docs: the connection budget).
DEFAULT_MAX_CONNECTIONS = 6
#: The fewest that work on every backend: PostgreSQL has SQLAlchemy's pool and the fast path's
#: asyncpg pool, one connection each at least (``store.sql.store.split_connections``).
MIN_MAX_CONNECTIONS = 2
#: How long a store call waits for a free connection of its pool before it fails (StoreError).
POOL_TIMEOUT_SECONDS = 30.0


def check_max_connections(max_connections: int) -> int:
    """``max_connections`` if a store can run within it; otherwise a ``ConfigError`` saying so."""
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise ConfigError(f"store max_connections must be an integer, got {type(max_connections).__name__}")
    if max_connections < MIN_MAX_CONNECTIONS:
        raise ConfigError(
            f"store max_connections must be at least {MIN_MAX_CONNECTIONS} (PostgreSQL needs one "
            f"connection for SQLAlchemy and one for the asyncpg fast path), got {max_connections}"
        )
    return max_connections


def create_store(
    url: str,
    *,
    auto_migrate: bool = True,
    retention_seconds: float | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> BaseTaskStore:
    """The backend for ``url``: ``sqlite+aiosqlite://``, ``postgresql+asyncpg://``, ``mongodb://``, or
    ``memory://`` (this process only, for tests: ``memory://`` private to each store, ``memory://name``
    shared by every store of that name in this process).

    ``retention_seconds`` (None: keep finished tasks) makes MongoDB keep a TTL index; SQL
    stores are purged by the runtime's cleanup pass (``purge_finished``) instead.

    ``max_connections`` bounds the connections the store holds at once, all its pools together
    (SQL: split by ``SqlTaskStore``; MongoDB: ``maxPoolSize``, per server); callers beyond it wait
    for a free one. Below ``MIN_MAX_CONNECTIONS`` it is a ``ConfigError``.
    """
    check_max_connections(max_connections)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        from taskplatform.store.sql import SqlTaskStore

        return SqlTaskStore(url, auto_migrate=auto_migrate, max_connections=max_connections)
    if scheme in ("mongodb", "mongodb+srv"):
        from taskplatform.store.mongo import MongoTaskStore

        return MongoTaskStore(url, retention_seconds=retention_seconds, max_connections=max_connections)
    if scheme == "memory":
        from taskplatform.store.memory import MemoryTaskStore

        return MemoryTaskStore(url)
    raise ConfigError(
        f"unsupported store URL scheme {scheme or url!r}; use sqlite+aiosqlite:///path, "
        "postgresql+asyncpg://user@host/db, mongodb://host/db or memory://"
    )
