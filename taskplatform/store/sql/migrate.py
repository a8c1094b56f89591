"""Bring a SQL database to the newest schema with Alembic, safely from several processes."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Arbitrary constant key for pg_advisory_xact_lock: one migrator at a time per database.
_PG_LOCK_KEY = 0x7A5C_0001


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    command.upgrade(alembic_config(connection), revision)


def _current(connection: Connection) -> Any:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Run migrations up to ``revision``. Concurrent callers serialise on a lock."""
    lock_path = _sqlite_lock_path(engine)
    if lock_path is None:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, revision)
        return
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, revision)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        rev = await conn.run_sync(_current)
    return str(rev) if rev is not None else None


def _sqlite_lock_path(engine: AsyncEngine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return f"{database}.migrate.lock"
