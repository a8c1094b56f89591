"""Logging configuration: plain text or one JSON object per line, task context included."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: Record attributes carried into every line when present (set by the worker's context).
CONTEXT_FIELDS = ("task_id", "task_type", "attempt", "node_id")

#: The task whose attempt this code runs for, if any: set by the worker around an attempt, so
#: every line logged while it runs (by the executable, the platform or a library) carries it.
TASK_LOG_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("taskplatform_task", default=None)


@contextlib.contextmanager
def task_log_context(**fields: Any) -> Iterator[None]:
    """Within the block (and the asyncio tasks it starts), log records carry ``fields``."""
    token = TASK_LOG_CONTEXT.set(fields)
    try:
        yield
    finally:
        TASK_LOG_CONTEXT.reset(token)


class TaskContextFilter(logging.Filter):
    """Copies the current task context onto each record (fields a record has already win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = TASK_LOG_CONTEXT.get()
        if context:
            for name, value in context.items():
                if getattr(record, name, None) is None:
                    setattr(record, name, value)
        return True


#: Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the task context, and the
    fields a call passed with ``extra=`` (a ``fields`` mapping stays nested, as given)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in data and value is not None:
                data[name] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines; task context appended in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS[:2] if getattr(record, n, None)]
        return f"{line} [{' '.join(context)}]" if context else line


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    """Route the root logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
