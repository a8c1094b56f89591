"""The external event format and its committed JSON Schema."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from taskplatform.events import (
    EVENT_CLASSES,
    EventType,
    Origin,
    Published,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSubmitted,
    TaskView,
    TaskWaiting,
)
from taskplatform.events.external import (
    ERROR_MESSAGE_MAX_CHARS,
    RESULT_SUMMARY_MAX_BYTES,
    ExternalTaskEvent,
    SubTaskCounts,
    routing_key_for,
    to_external,
)
from taskplatform.events.schema import DEFAULT_PATH, main, render, task_event_schema
from taskplatform.models import BackgroundTask, ErrorInfo, SubTaskStatusSummary, TaskStatus, utcnow


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def error(message: str = "boom") -> ErrorInfo:
    return ErrorInfo(type="ValueError", message=message, traceback="Traceback...\nsecret", attempt=1)


def sample(cls: type[TaskEvent], task_id: str, task_type: str = "generate_summary") -> TaskEvent:
    """An event of ``cls`` with every type-specific field set."""
    extra: dict[type[TaskEvent], dict[str, Any]] = {
        TaskSubmitted: {"parent_task_id": "parent-1", "origin": Origin.API},
        TaskProgress: {"progress": {"percent": 40, "message": "reading", "stage": "parse"}},
        TaskWaiting: {"result": {"own": True}, "children": 3},
        TaskRetrying: {
            "error": error(),
            "delay_seconds": 2.0,
            "next_attempt_at": utcnow() + timedelta(seconds=2),
        },
        TaskCompleted: {"result": {"summary": "short", "sentences": ["a", "b"]}},
        TaskFailed: {"error": error()},
        TaskDeadLettered: {"reason": "max-retries-exceeded", "error": error()},
    }
    return cls(task_id=task_id, task_type=task_type, attempt=1, node_id="node-a", **extra.get(cls, {}))


def _view(task: BackgroundTask | None) -> TaskView | None:
    """What the bus gives observers of a task's state (None stays None)."""
    return None if task is None else TaskView.of(task)


def state_after(event: TaskEvent, **fields: Any) -> BackgroundTask:
    status = {
        EventType.SUBMITTED: TaskStatus.QUEUED,
        EventType.REQUEUED: TaskStatus.QUEUED,
        EventType.RETRYING: TaskStatus.RETRYING,
        EventType.COMPLETED: TaskStatus.COMPLETED,
        EventType.FAILED: TaskStatus.FAILED,
        EventType.DEAD_LETTERED: TaskStatus.DEAD_LETTER,
        EventType.CANCELLED: TaskStatus.CANCELLED,
    }.get(event.type, TaskStatus.RUNNING)
    values: dict[str, Any] = {
        "id": event.task_id,
        "task_type": event.task_type,
        "status": status,
        "user_id": "user-7",
        "tags": ["docs"],
        "priority": 3,
        "version": 5,
        "retry_count": 1,
    }
    values.update(fields)
    return BackgroundTask(**values)


def test_committed_schema_is_the_generated_one() -> None:
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), (
        "docs/events/task-event.schema.json is stale: run `python -m taskplatform.events.schema --write`"
    )
    assert main(["--check"]) == 0


def test_check_fails_with_a_clear_message_when_the_file_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "task-event.schema.json"
    stale.write_text(render().replace("Task id.", "Task identifier."), encoding="utf-8")
    assert main(["--check", "--path", str(stale)]) == 1
    assert "--write" in capsys.readouterr().err
    assert main(["--check", "--path", str(tmp_path / "missing.json")]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["--write", "--path", str(stale)]) == 0
    assert main(["--check", "--path", str(stale)]) == 0


def test_schema_has_id_title_dialect_and_field_descriptions() -> None:
    schema = task_event_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(":v1") and "title" in schema
    assert schema["properties"]["schema_version"]["const"] == "1"
    assert "store version" in schema["properties"]["sequence"]["description"]
    task = schema["$defs"]["TaskSnapshot"]["properties"]
    assert all("description" in prop for prop in task.values())


@pytest.mark.parametrize("with_task", [True, False], ids=["with-task", "event-only"])
@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.type.value)
def test_every_event_type_converts_to_an_event_valid_against_the_committed_schema(
    cls: type[TaskEvent], with_task: bool, validator: Draft202012Validator
) -> None:
    event = sample(cls, "task-1")
    task = state_after(event) if with_task else None
    external = to_external(Published(event, _view(task)))
    document = json.loads(external.model_dump_json())
    errors = [e.message for e in validator.iter_errors(document)]
    assert errors == []
    assert document["type"] == cls.type.value
    assert document["routing_key"] == f"task.generate_summary.{cls.type.value}"
    assert document["event_id"] == event.event_id
    assert document["task"]["id"] == "task-1"
    assert document["sequence"] == (5 if with_task else None)
    assert document["producer"] == {"node_id": "node-a", "origin": event.origin.value}
    assert ExternalTaskEvent.model_validate(document) == external


def test_a_tampered_event_does_not_validate(validator: Draft202012Validator) -> None:
    document = json.loads(to_external(Published(sample(TaskStarted, "t"), None)).model_dump_json())
    document["type"] = "exploded"
    del document["producer"]
    assert len(list(validator.iter_errors(document))) == 2


def test_routing_key_is_task_type_then_event_name() -> None:
    assert routing_key_for("generate_summary", EventType.COMPLETED) == "task.generate_summary.completed"
    assert routing_key_for("media.render", "dead_lettered") == "task.media.render.dead_lettered"
    with pytest.raises(ValueError):
        routing_key_for("x", "exploded")


def test_error_summary_drops_the_traceback_and_cuts_the_message() -> None:
    event = TaskFailed(task_id="t", task_type="x", error=error("e" * 2000))
    external = to_external(Published(event, None))
    assert external.error is not None
    assert len(external.error.message) == ERROR_MESSAGE_MAX_CHARS
    assert "traceback" not in external.model_dump_json()
    assert external.task.status is TaskStatus.FAILED


def test_dead_letter_without_error_info_still_says_why() -> None:
    event = TaskDeadLettered(task_id="t", task_type="x", reason="poison-message", attempt=2)
    external = to_external(Published(event, None))
    assert external.error is not None
    assert (external.error.reason, external.error.attempt) == ("poison-message", 2)


def test_small_result_is_carried_and_a_large_one_is_summarised() -> None:
    small = TaskCompleted(task_id="t", task_type="x", result={"value": 1})
    assert to_external(Published(small, None)).result_summary == {"value": 1}

    big_result = {"text": "x" * RESULT_SUMMARY_MAX_BYTES, "count": 1}
    big = TaskCompleted(task_id="t", task_type="x", result=big_result)
    document = json.loads(to_external(Published(big, None)).model_dump_json())
    assert document["result_summary"]["truncated"] is True
    assert document["result_summary"]["keys"] == ["text", "count"]
    assert document["result_summary"]["size_bytes"] > RESULT_SUMMARY_MAX_BYTES
    assert len(json.dumps(document)) < RESULT_SUMMARY_MAX_BYTES  # the big text is not in it


def test_roll_up_completion_uses_the_parents_stored_result() -> None:
    event = TaskCompleted(
        task_id="p", task_type="x", origin=Origin.CHILDREN, status=TaskStatus.COMPLETED_WITH_ERRORS
    )
    task = state_after(event, status=TaskStatus.COMPLETED_WITH_ERRORS, result={"own": 1})
    external = to_external(Published(event, _view(task)))
    assert external.result_summary == {"own": 1}
    assert external.task.status is TaskStatus.COMPLETED_WITH_ERRORS
    assert to_external(Published(event, None)).task.status is TaskStatus.COMPLETED_WITH_ERRORS


def test_parent_events_carry_the_sub_task_roll_up() -> None:
    summary = SubTaskStatusSummary(total=4, completed=2, failed=1, running=1)
    event = TaskStarted(task_id="p", task_type="x")
    external = to_external(Published(event, _view(state_after(event, sub_task_status_summary=summary))))
    assert external.sub_tasks is not None and external.sub_tasks.failed == 1
    assert external.progress is not None and external.progress.percent == 75.0


def test_progress_keeps_extra_keys_and_never_fails_on_odd_values() -> None:
    event = TaskProgress(task_id="t", task_type="x", progress={"percent": "55%", "message": 3, "rows": 10})
    progress = to_external(Published(event, None)).progress
    assert progress is not None
    assert progress.model_dump() == {"percent": 55.0, "message": "3", "rows": 10}
    odd = TaskProgress(task_id="t", task_type="x", progress={"percent": "lots", "when": utcnow()})
    dumped = json.loads(to_external(Published(odd, None)).model_dump_json())["progress"]
    assert dumped["percent"] is None and isinstance(dumped["when"], str)


def test_waiting_event_reports_progress() -> None:
    event = TaskWaiting(task_id="p", task_type="x", children=3)
    progress = to_external(Published(event, None)).progress
    assert progress is not None and progress.message == "waiting for 3 sub-task(s)"


def test_sub_task_counts_cover_every_bucket_of_the_internal_summary() -> None:
    assert set(SubTaskStatusSummary.model_fields) <= set(SubTaskCounts.model_fields)
