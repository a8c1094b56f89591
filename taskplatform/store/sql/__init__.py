"""SQL backends (PostgreSQL, SQLite)."""

from taskplatform.store.sql.store import SqlTaskStore

__all__ = ["SqlTaskStore"]
