"""What every mixin of ``SqlTaskStore`` needs of the store it is part of, and the mapping
between task documents and rows."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from taskplatform.models import BackgroundTask
from taskplatform.models.task import idempotency_scope
from taskplatform.store.ports import StoreClock
from taskplatform.store.primitives import stored_value
from taskplatform.store.sql.schema import OUTBOX_FIELDS, tasks

if TYPE_CHECKING:
    from taskplatform.store.sql.pg_fast import PgFastPath

_COLUMNS = {c.name for c in tasks.columns}


def column_name(field: str) -> str:
    """The column of a document field (``outbox.<field>``: ``outbox_<field>``)."""
    return field.replace("outbox.", "outbox_", 1) if field.startswith("outbox.") else field


def columns_of(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Document-field changes as column values."""
    return {column_name(k): stored_value(v) for k, v in changes.items()}


class SqlPart(StoreClock, ABC):
    """The store's engines, its dialect, its translation of driver errors, and its rows."""

    #: PostgreSQL's asyncpg fast path for the hot statements (None on SQLite, or when closed).
    _fast: PgFastPath | None

    @property
    @abstractmethod
    def engine(self) -> AsyncEngine:
        """The engine, for transactions."""

    @property
    @abstractmethod
    def autocommit(self) -> AsyncEngine:
        """The engine in autocommit, for single statements."""

    @property
    @abstractmethod
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""

    @abstractmethod
    def _errors(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Translates driver errors to StoreError."""

    @staticmethod
    def _to_row(task: BackgroundTask) -> dict[str, Any]:
        doc = task.model_dump(mode="python")
        row = {k: v for k, v in doc.items() if k in _COLUMNS}
        row["status"] = task.status.value
        for name in ("error_info", "sub_task_status_summary", "target"):
            model = getattr(task, name)
            row[name] = model.model_dump(mode="json") if model is not None else None
        for name in OUTBOX_FIELDS:
            row[f"outbox_{name}"] = stored_value(doc["outbox"][name])
        row["idempotency_scope"] = idempotency_scope(task.user_id, task.idempotency_key)
        # the routing key of an aimed task that waits in a queue of its own (None: a fan-out parent)
        row["target_key"] = task.target.route(task.task_type) if task.target is not None else None
        return row

    @staticmethod
    def _to_task(row: Row[Any] | Mapping[str, Any]) -> BackgroundTask:
        data = dict(row._mapping) if isinstance(row, Row) else dict(row)
        data["outbox"] = {name: data.pop(f"outbox_{name}") for name in OUTBOX_FIELDS}
        return BackgroundTask.model_validate(data)
