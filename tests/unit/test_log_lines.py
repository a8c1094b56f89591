"""The log lines of failed attempts and dead-lettered messages, JSON lines, and a task's own fields,
without a broker: a settler over fakes, records caught by caplog, formatted as the worker does."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from taskplatform.errors import PermanentFailure, Retry, StoreError
from taskplatform.events.bus import Delivery, EventBus
from taskplatform.logsetup import (
    JsonFormatter,
    TaskContextFilter,
    TextFormatter,
    printable,
    task_log_context,
    top_level_fields,
)
from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.retry import RetryPolicy
from taskplatform.worker.attempt import AttemptRunner
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.context import ExecutionContext
from taskplatform.worker.outcomes import Failed, Outcome, Succeeded, format_traceback
from taskplatform.worker.recording import EventRecorder
from taskplatform.worker.settlement import Settler

SETTLEMENT = "taskplatform.worker.settlement"
POLICY = RetryPolicy(max_attempts=3, initial_delay=2.0, jitter=0.0)


class Flaky(Exception):
    """Declared retryable by the settle calls below."""


class Bus:
    """Accepts every event (after ``failures`` StoreErrors), or rejects them all."""

    def __init__(self, *, failures: int = 0, reject: str | None = None) -> None:
        self.failures = failures
        self.reject = reject
        self.events: list[Any] = []

    async def publish(self, event: Any, task: BackgroundTask | None = None) -> Delivery:
        if self.failures:
            self.failures -= 1
            raise StoreError("store unreachable")
        self.events.append(event)
        delivery = Delivery(event, task)
        if self.reject is not None:
            delivery.refuse(self.reject)
        return delivery


class Store:
    def now(self) -> Any:
        return utcnow()

    async def mark_published(self, ids: list[str], *, owner: str) -> None:
        return None

    async def answers(self) -> bool:
        return False  # an outage, not a refusal: the settler keeps retrying


class Publisher:
    def __init__(self) -> None:
        self.raw: list[tuple[str, str, Any]] = []

    async def publish_task(self, task: BackgroundTask) -> None:
        return None

    async def publish_raw(self, exchange: str, routing_key: str, message: Any, *, what: str) -> None:
        self.raw.append((exchange, routing_key, message))


class Channel:
    is_closed = False


class Message:
    """An incoming delivery: records how it was settled."""

    def __init__(self, message_id: str | None = "m-1", body: bytes = b"{}") -> None:
        self.message_id = message_id
        self.delivery_tag = 7
        self.routing_key = "test_noop"
        self.headers: dict[str, Any] = {}
        self.body = body
        self.content_type = "application/json"
        self.correlation_id = None
        self.type = None
        self.app_id = None
        self.channel = Channel()
        self.told: list[str] = []

    async def ack(self) -> None:
        self.told.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.told.append("requeue" if requeue else "reject")


def _settler(bus: Bus, publisher: Publisher | None = None) -> Settler:
    recorder = EventRecorder(Store(), bus, node_id="node-a", store_hold=5.0)  # type: ignore[arg-type]
    config = WorkerConfig(node_id="node-a", dead_letter_exchange="dlx")
    return Settler(recorder, publisher or Publisher(), config)  # type: ignore[arg-type]


def _task(attempt: int = 0) -> BackgroundTask:
    return BackgroundTask(
        task_type="test_noop", parameters={}, retry_count=attempt, status=TaskStatus.RUNNING
    )


def _raised(exc: BaseException) -> Failed:
    """The outcome of an attempt that raised ``exc`` (with a real traceback)."""
    try:
        raise exc
    except BaseException as caught:
        return Failed(caught, format_traceback(caught))


async def _settle(
    settler: Settler, task: BackgroundTask, outcome: Outcome, message: Message | None = None
) -> None:
    await settler.settle(
        message or Message(),  # type: ignore[arg-type]
        task,
        outcome,
        policy=POLICY,
        retryable=(Flaky,),
    )


def _lines(caplog: pytest.LogCaptureFixture, logger: str = SETTLEMENT) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def _json(record: logging.LogRecord) -> dict[str, Any]:
    TaskContextFilter().filter(record)
    parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return parsed


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield


# ---------------------------------------------------------------- failed attempts


async def test_a_retried_attempt_logs_one_warning_with_the_delay_and_the_task_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _task(attempt=0)
    await _settle(_settler(Bus()), task, _raised(Flaky("the service said 503")))
    [line] = _lines(caplog)
    assert line.levelno == logging.WARNING
    assert "retrying in 2.0s" in line.getMessage() and "Flaky: the service said 503" in line.getMessage()
    data = _json(line)
    assert (data["task_id"], data["task_type"], data["attempt"], data["node_id"]) == (
        task.id,
        "test_noop",
        0,
        "node-a",
    )
    assert data["delay_seconds"] == 2.0 and data["reason"] == "retry"
    assert data["error_type"] == "Flaky" and data["error_message"] == "the service said 503"
    assert "exc" not in data  # a retried attempt's traceback stays in its error_info


async def test_a_retry_the_task_asks_for_logs_the_delay_it_asked_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _settle(_settler(Bus()), _task(), _raised(Retry("rate limited", delay=37.5)))
    [line] = _lines(caplog)
    assert line.levelno == logging.WARNING and _json(line)["delay_seconds"] == 37.5
    assert "retrying in 37.5s" in line.getMessage()


async def test_an_unexpected_exception_logs_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _task(attempt=1)

    def lookup() -> None:
        _ = {}["missing-key"]

    try:
        lookup()
    except KeyError as exc:
        outcome = Failed(exc, format_traceback(exc))
    message = Message()
    await _settle(_settler(Bus()), task, outcome, message)
    [line] = _lines(caplog)
    assert line.levelno == logging.ERROR
    assert "failed for good (non-retryable)" in line.getMessage() and "KeyError" in line.getMessage()
    data = _json(line)
    assert data["task_id"] == task.id and data["attempt"] == 1 and data["node_id"] == "node-a"
    assert data["reason"] == "non-retryable" and data["error_type"] == "KeyError"
    assert data["exc"].startswith("Traceback") and "in lookup" in data["exc"]
    assert "KeyError: 'missing-key'" in data["exc"]
    assert message.told == ["reject"]  # and the message went to the DLQ
    text = TextFormatter().format(line)
    assert "Traceback" in text and task.id in text


async def test_a_permanent_failure_and_exhausted_attempts_are_dead_letters_logged_as_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settler = _settler(Bus())
    await _settle(settler, _task(), _raised(PermanentFailure("value must not be negative")))
    await _settle(settler, _task(attempt=2), _raised(Flaky("still failing")))  # the last of 3
    permanent, exhausted = _lines(caplog)
    assert permanent.levelno == exhausted.levelno == logging.ERROR
    assert _json(permanent)["reason"] == "permanent-failure"
    assert (
        _json(exhausted)["reason"] == "attempts-exhausted"
        and "Flaky: still failing" in _json(exhausted)["exc"]
    )


async def test_an_outcome_built_without_raising_is_logged_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = Failed(PermanentFailure("the attempt's outcome could not be stored: too big"), "")
    await _settle(_settler(Bus()), _task(), refused)
    [line] = _lines(caplog)
    assert line.levelno == logging.ERROR and line.exc_info is None and "exc" not in _json(line)


async def test_store_retries_of_the_outcome_still_give_one_line_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus(failures=2)
    await _settle(_settler(bus), _task(), _raised(Flaky("x")))
    failures = [r for r in _lines(caplog) if "attempt 0 failed" in r.getMessage()]
    assert len(failures) == 1 and len(bus.events) == 1
    assert any("store write failed" in r.getMessage() for r in _lines(caplog))  # the retries happened


async def test_an_outcome_the_store_did_not_take_logs_no_failure_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _settle(_settler(Bus(reject="the task moved on")), _task(), _raised(Flaky("x")))
    assert not [r for r in _lines(caplog) if "failed" in r.getMessage() and "attempt" in r.getMessage()]
    assert any("not recorded" in r.getMessage() for r in _lines(caplog))


async def test_success_logs_nothing_and_cancellation_logs_info(caplog: pytest.LogCaptureFixture) -> None:
    class Result(BaseModel):
        value: int = 1

    from taskplatform.errors import Cancelled

    settler = _settler(Bus())
    await _settle(settler, _task(), Succeeded(Result()))
    assert _lines(caplog) == []
    await _settle(settler, _task(), _raised(Cancelled("stopped on request")))
    [line] = _lines(caplog)
    assert line.levelno == logging.INFO and "cancelled" in line.getMessage()


async def test_an_error_message_with_newlines_cannot_forge_a_text_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = "bad\n2030-01-01 00:00:00,000 INFO    taskplatform: all is well"
    await _settle(_settler(Bus()), _task(), _raised(PermanentFailure(forged)))
    [line] = _lines(caplog)
    assert "\n" not in line.getMessage() and "bad\\n2030" in line.getMessage()
    assert printable("x" * 600, 500) == "x" * 500 + "…"


# ---------------------------------------------------------------- message-level dead letters


async def test_a_malformed_message_logs_an_error_naming_its_id_and_the_problem(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = Publisher()
    settler = _settler(Bus(), publisher)
    await settler.reject_malformed(Message("m-42"), "bad-json", "body is not JSON: unexpected character")  # type: ignore[arg-type]
    await settler.reject_malformed(Message(None), "missing-header", "header 'x-task-id' is missing")  # type: ignore[arg-type]
    named, anonymous = _lines(caplog)
    assert named.levelno == anonymous.levelno == logging.ERROR
    assert "message m-42: bad-json: body is not JSON" in named.getMessage()
    data = _json(named)
    assert (
        data["message_id"] == "m-42" and data["reason"] == "bad-json" and data["routing_key"] == "test_noop"
    )
    assert "no message id, delivery 7" in anonymous.getMessage() and _json(anonymous)["message_id"] is None
    assert len(publisher.raw) == 2  # both went to the dead-letter exchange


async def test_a_task_whose_type_no_worker_runs_logs_its_task_id_with_the_dead_letter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settler = _settler(Bus())
    await settler.dead_letter_task(Message(), "t-9", "gone_type", 0, "unknown-task-type", "no executable")  # type: ignore[arg-type]
    [line] = [r for r in _lines(caplog) if r.levelno == logging.ERROR]
    assert _json(line)["task_id"] == "t-9" and _json(line)["reason"] == "unknown-task-type"


# ---------------------------------------------------------------- JSON lines and task fields


def _record(message: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_uvicorn_colour_codes_never_reach_a_json_line() -> None:
    line = JsonFormatter().format(_record("Started server process [1]", color_message="\x1b[36m%d\x1b[0m"))
    assert "color_message" not in line and "\\u001b" not in line and "\x1b" not in line
    assert json.loads(line)["message"] == "Started server process [1]"


def test_extra_fields_are_top_level_and_none_is_kept_as_null() -> None:
    data = json.loads(JsonFormatter().format(_record("hi", route="/x", user_id=None)))
    assert data["route"] == "/x" and "user_id" in data and data["user_id"] is None


def test_fields_named_like_record_attributes_or_line_keys_go_under_fields() -> None:
    extra = top_level_fields({"width": 3, "name": "n", "message": "m", "task_id": "forged", "level": 1})
    assert extra == {"width": 3, "fields": {"name": "n", "message": "m", "task_id": "forged", "level": 1}}
    logging.getLogger("any").makeRecord("any", logging.INFO, __file__, 1, "x", None, None, extra=extra)


async def test_a_tasks_log_info_fields_are_top_level_keys_and_its_context_wins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _task(attempt=2)

    class Params(BaseModel):
        pass

    ctx: ExecutionContext[Params] = ExecutionContext(
        task, Params(), bus=EventBus(), submitter=None, node_id="n-1"
    )
    ctx.log_info("resized", width=640, name="photo.png", task_id="not mine")
    ctx.log_error("upload failed", status=502)
    info, error = _lines(caplog, "taskplatform.task")
    data = _json(info)
    assert data["width"] == 640 and data["task_id"] == task.id and data["attempt"] == 2
    assert data["fields"] == {"name": "photo.png", "task_id": "not mine"}  # clashing names kept nested
    assert error.levelno == logging.ERROR and _json(error)["status"] == 502 and "fields" not in _json(error)


def test_the_task_context_set_by_the_worker_is_on_lines_that_pass_no_extra() -> None:
    with task_log_context(task_id="t-1", task_type="report", attempt=0, node_id="n"):
        data = _json(_record("library line"))
    assert (data["task_id"], data["attempt"]) == ("t-1", 0)


# ---------------------------------------------------------------- a lost lease


class LeaseLost:
    """A store that has given the attempt's lease to someone else."""

    def now(self) -> Any:
        return utcnow()

    async def renew_lease(self, task_id: str, **kwargs: Any) -> None:
        return None

    async def get(self, task_id: str) -> None:
        return None


async def test_an_attempt_that_lost_its_lease_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext

    class Params(BaseModel):
        pass

    class Result(BaseModel):
        pass

    class Waits(BackgroundTaskExecutable[Params, Result]):
        task_type = "test_waits"

        async def execute(self, ctx: TaskContext[Params]) -> Result:
            while not ctx.cancelled:
                await asyncio.sleep(0.01)
            raise PermanentFailure("stopped")

    task = _task()
    config = WorkerConfig(
        node_id="n",
        dead_letter_exchange="dlx",
        default_timeout=30,
        lease_seconds=0.15,
        cancel_poll=0.02,
        cancel_grace=5,
    )
    runner = AttemptRunner(LeaseLost(), config, bus=EventBus())  # type: ignore[arg-type]
    ctx: ExecutionContext[Params] = ExecutionContext(
        task, Params(), bus=EventBus(), submitter=None, node_id="n"
    )
    outcome = await runner.run(task, Waits(), ctx)
    assert isinstance(outcome, Failed)
    [line] = [r for r in caplog.records if r.name == "taskplatform.worker.attempt"]
    assert line.levelno == logging.WARNING and "lease lost" in line.getMessage()


# ---------------------------------------------------------------- the DLQ consumer


class DeadMessage:
    """A message RabbitMQ dead-lettered after its delivery limit (a poison message)."""

    def __init__(self) -> None:
        self.message_id = "poison-7"
        self.body = b'{"not": "a task"}'
        self.routing_key = "tasks.work.default"
        self.exchange = "tasks.dlx.exchange"
        self.headers: dict[str, Any] = {
            "x-death": [{"reason": "delivery_limit", "queue": "tasks.work.default", "count": 1}]
        }
        self.content_type = "application/json"
        self.content_encoding = None
        self.correlation_id = None
        self.type = None
        self.app_id = None
        self.timestamp = None
        self.delivery_mode = 2
        self.priority = None


async def test_a_new_dead_letter_is_a_warning_naming_its_message_and_a_redelivered_one_info(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from taskplatform.deadletters.consumer import DeadLetterConsumer
    from taskplatform.store import create_store

    store = create_store(f"sqlite+aiosqlite:///{tmp_path}/dead.db")
    await store.open()
    try:
        consumer = DeadLetterConsumer(None, "dlq", store, EventBus(), node_id="n")  # type: ignore[arg-type]
        await consumer.capture(DeadMessage())  # type: ignore[arg-type]
        await consumer.capture(DeadMessage())  # type: ignore[arg-type]  # the same death again
    finally:
        await store.close()
    first, again = _lines(caplog, "taskplatform.deadletters.consumer")
    assert first.levelno == logging.WARNING and again.levelno == logging.INFO
    data = _json(first)
    assert (
        data["message_id"] == "poison-7" and data["reason"] == "delivery_limit" and data["kind"] == "message"
    )
    assert (
        data["outcome"] == "created" and "poison-7" in data["message"] and "delivery_limit" in data["message"]
    )
    assert _json(again)["outcome"] == "duplicate"
