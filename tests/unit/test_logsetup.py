"""JSON log lines: fixed keys, the task context, and fields passed with ``extra=``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from taskplatform.batching import Coalescer
from taskplatform.logsetup import TASK_LOG_CONTEXT, JsonFormatter, TaskContextFilter, task_log_context


def _line(record: logging.LogRecord) -> dict[str, object]:
    TaskContextFilter().filter(record)
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("lib", logging.WARNING, __file__, 1, message, None, None)
    record.__dict__.update(extra)  # what logging does with extra=
    return record


def test_a_line_carries_the_task_context_and_the_callers_extra_fields() -> None:
    with task_log_context(task_id="t-1", task_type="report", attempt=2, node_id="n"):
        line = _line(_record("hello", order=7, fields={"k": "v"}))
    assert line["message"] == "hello" and line["level"] == "WARNING" and line["logger"] == "lib"
    assert (line["task_id"], line["task_type"], line["attempt"], line["node_id"]) == ("t-1", "report", 2, "n")
    assert line["order"] == 7 and line["fields"] == {"k": "v"}
    assert "args" not in line and "msg" not in line and "pathname" not in line  # record internals


def test_outside_a_task_a_line_has_no_task_fields_and_extra_does_not_override_the_context() -> None:
    assert "task_id" not in _line(_record("plain"))
    with task_log_context(task_id="t-1", task_type="report"):
        line = _line(_record("mine", task_id="explicit"))
    assert line["task_id"] == "explicit"  # a field the record already has wins


async def test_a_batch_serving_several_tasks_runs_outside_each_of_their_contexts() -> None:
    seen: list[object] = []

    async def flush(items: Sequence[int]) -> list[int]:
        seen.append(TASK_LOG_CONTEXT.get())
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(flush)
    with task_log_context(task_id="t-1"):
        assert await coalescer.submit(1) == 1
    assert seen == [None]  # the drain started inside t-1's attempt, but is not t-1's
