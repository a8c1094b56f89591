"""Alembic environment: runs on a connection handed over by the platform."""

from __future__ import annotations

from alembic import context

from taskplatform.store.sql.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through 'taskplatform db upgrade' (it supplies the connection)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
