"""SQLite connection set-up for the SQL store: pragmas on connect, IMMEDIATE transactions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry


def configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout and foreign keys on every connection; write locks taken at BEGIN."""
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)


def _sqlite_begin_immediate(conn: Connection) -> None:
    """Begin SQLite transactions IMMEDIATE (taking the write lock at once).

    A multi-statement transaction here reads, then writes (the roll-up ledger); begun
    DEFERRED, two of them would both hold read locks and deadlock upgrading them (one gets
    SQLITE_BUSY at once, busy_timeout notwithstanding). Autocommit connections run single
    statements, each atomic on its own, and emit no BEGIN.
    """
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
