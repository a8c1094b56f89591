"""Logging configuration: plain text or one JSON object per line, task context included."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
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

#: The keys a JSON line sets itself (an ``extra=`` field of one of these names would be lost).
LINE_KEYS = frozenset({"ts", "level", "logger", "message", "exc", "stack", "fields", *CONTEXT_FIELDS})

#: ``extra=`` fields left out of JSON lines: uvicorn's copy of its message with ANSI colour codes.
_DROPPED_EXTRAS = frozenset({"color_message"})


def top_level_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as ``extra=`` for a call that wants them as top-level keys of its JSON line.

    A name a log record or a line uses already (``name``, ``message``, ``task_id``…) cannot be
    a key of its own: those fields go under ``"fields"``, so nothing is lost or overwritten.
    """
    extra: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _RECORD_ATTRIBUTES or name in LINE_KEYS or name in _DROPPED_EXTRAS:
            nested[name] = value
        else:
            extra[name] = value
    if nested:
        extra["fields"] = nested
    return extra


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with its control characters escaped (a newline as
    ``\\n``), for quoting outside text in a log line: it cannot break the line or forge another."""
    cut = text[:limit]
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in cut)
    return escaped + ("…" if len(text) > limit else "")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the task context, and the
    fields a call passed with ``extra=`` as top-level keys (``None`` as null)."""

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
            if name not in _RECORD_ATTRIBUTES and name not in LINE_KEYS and name not in _DROPPED_EXTRAS:
                data[name] = value
        fields = record.__dict__.get("fields")
        if fields is not None:
            data["fields"] = fields
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
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
