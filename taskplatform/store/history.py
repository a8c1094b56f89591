"""What every backend shares about the attempt history (its port: ``record_ports.AttemptHistory``).

``add_attempts`` writes records (idempotent by id: a record written again changes nothing) and
``list_attempts`` reads a task's, oldest first. Records go with their task when it is deleted
(on request, or by retention). See ``taskplatform.models.attempt``.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import UTC, datetime

from taskplatform.models.attempt import ERROR_MESSAGE_LIMIT, AttemptRecord
from taskplatform.store.deadletters import storable_text


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def cut_text(value: str | None, limit: int) -> str | None:
    """``value`` free of what a store cannot hold, cut to ``limit`` characters (``…`` ends a cut one)."""
    if value is None:
        return None
    value = storable_text(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def storable_attempt(record: AttemptRecord) -> AttemptRecord:
    """``record`` as every backend keeps it: UTC times, texts cut to their columns and free of
    what a store cannot hold (NUL, lone surrogates)."""
    return record.model_copy(
        update={
            "started_at": _utc(record.started_at),
            "ended_at": _utc(record.ended_at),
            "node_id": cut_text(record.node_id, 255),
            "host": cut_text(record.host, 255),
            "error_type": cut_text(record.error_type, 255),
            "error_message": cut_text(record.error_message, ERROR_MESSAGE_LIMIT),
        }
    )


def oldest_first(records: Sequence[AttemptRecord], limit: int) -> builtins.list[AttemptRecord]:
    """The newest ``limit`` of ``records``, oldest first (by end, then id; running last)."""
    far = datetime.max.replace(tzinfo=UTC)
    ordered = sorted(records, key=lambda r: (r.ended_at or far, r.id))
    return ordered[-limit:] if limit > 0 else []
