"""SQLite connection set-up for the SQL store: pragmas on connect, IMMEDIATE transactions.

The driver runs every connection in autocommit (``isolation_level=None``) and the store begins
its transactions itself. Its autocommit engine is marked by an execution option of its own,
not SQLAlchemy's ``isolation_level="AUTOCOMMIT"``: aiosqlite switches the isolation level with
a round trip to its thread at every checkout, and an asyncio cancellation landing in that round
trip (a task stopped mid store call) left the connection checked out for ever — found only by
the garbage collector, with a warning at an arbitrary later moment.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

#: Execution option marking the store's autocommit engine (single statements, no BEGIN).
AUTOCOMMIT_OPTION = "taskplatform_autocommit"


def engine_options() -> dict[str, Any]:
    """Options of ``create_async_engine`` for SQLite: connections in the driver's autocommit."""
    return {"connect_args": {"isolation_level": None}}


def configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout and foreign keys on every connection; write locks taken at BEGIN."""
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)


def autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for single statements: each commits on its own (the driver's autocommit)."""
    return engine.execution_options(**{AUTOCOMMIT_OPTION: True})


def _sqlite_begin_immediate(conn: Connection) -> None:
    """Begin SQLite transactions IMMEDIATE (taking the write lock at once).

    A multi-statement transaction here reads, then writes (the roll-up ledger); begun
    DEFERRED, two of them would both hold read locks and deadlock upgrading them (one gets
    SQLITE_BUSY at once, busy_timeout notwithstanding). Autocommit connections run single
    statements, each atomic on its own, and emit no BEGIN (their COMMIT/ROLLBACK, with no
    transaction open, do nothing).
    """
    if not conn.get_execution_options().get(AUTOCOMMIT_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
