"""Durable task state: the ``TaskStore`` port and its backends, chosen by URL."""

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

__all__ = [
    "AuditPage",
    "BaseTaskStore",
    "DeadLetterCounts",
    "DeadLetterFilter",
    "DeadLetterPage",
    "Guard",
    "InvalidCursorError",
    "TaskFilter",
    "TaskPage",
    "TaskStore",
    "UpsertOutcome",
    "create_store",
]


def create_store(
    url: str, *, auto_migrate: bool = True, retention_seconds: float | None = None
) -> BaseTaskStore:
    """The backend for ``url``: ``sqlite+aiosqlite://``, ``postgresql+asyncpg://`` or ``mongodb://``.

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
    raise ConfigError(
        f"unsupported store URL scheme {scheme or url!r}; use sqlite+aiosqlite:///path, "
        "postgresql+asyncpg://user@host/db or mongodb://host/db"
    )
