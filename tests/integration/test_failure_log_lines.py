"""The log lines of failed attempts and dead letters, as a real ``taskplatform worker`` process
writes them with ``LOG_JSON=true``: failing tasks run on the real broker and store, and its stderr is
read back line by line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.runtime import Runtime
from tests.support.runtime import eventually, running
from tests.support.worker_process import start_worker

pytestmark = pytest.mark.integration


async def _status(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


def _task_lines(lines: list[dict[str, Any]], task_id: str, logger: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("task_id") == task_id and line["logger"] == logger]


async def test_a_worker_logs_retries_as_warnings_and_dead_letters_as_errors_with_their_tracebacks(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
    own_postgres_database_url: str,
    tmp_path: Path,
) -> None:
    api = make_runtime(role="api", consume=False, store_url=own_postgres_database_url)
    flaky = BackgroundTask(task_type="test_flaky", parameters={"fail_times": 1})  # retried once
    boom = BackgroundTask(task_type="test_boom", parameters={"value": 7})  # an unexpected ValueError
    picky = BackgroundTask(task_type="test_picky", parameters={"value": -1})  # PermanentFailure
    log_file = tmp_path / "worker.log"
    async with running(api):
        for task in (flaky, boom, picky):
            await api.store.create(task)
        with log_file.open("wb") as stderr:
            worker = start_worker(
                api.settings, node_id="logging-worker", stderr=stderr, log_json="true", log_level="INFO"
            )
            try:
                for task in (flaky, boom, picky):
                    await api.publisher.publish(TaskMessage.for_task(task))
                channel = await rabbitmq.channel()
                queue = api.topology.queue_for("test_noop", 0)
                assert queue is not None
                await channel.default_exchange.publish(  # a message no worker can read
                    aio_pika.Message(
                        b"not json",
                        message_id="poison-1",
                        headers={"x-task-id": "poison-task", "x-task-type": "test_noop"},
                    ),
                    routing_key=queue,
                )
                await channel.close()

                async def settled() -> bool:
                    return (
                        await _status(api, flaky.id) is TaskStatus.COMPLETED
                        and await _status(api, boom.id) is TaskStatus.DEAD_LETTER
                        and await _status(api, picky.id) is TaskStatus.DEAD_LETTER
                        and (await api.store.count_dead_letters()).total >= 3  # boom, picky, poison
                    )

                await eventually(settled, timeout=60)
            finally:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    settlement = "taskplatform.worker.settlement"

    [retry] = _task_lines(lines, flaky.id, settlement)  # one line for its one failed attempt
    assert retry["level"] == "WARNING" and retry["delay_seconds"] == 1.0 and retry["attempt"] == 0
    assert (retry["task_type"], retry["node_id"], retry["error_type"]) == (
        "test_flaky",
        "logging-worker",
        "FlakyError",
    )
    assert "retrying in 1.0s" in retry["message"] and "exc" not in retry

    [unexpected] = _task_lines(lines, boom.id, settlement)
    assert unexpected["level"] == "ERROR" and unexpected["reason"] == "non-retryable"
    assert (unexpected["task_type"], unexpected["attempt"], unexpected["node_id"]) == (
        "test_boom",
        0,
        "logging-worker",
    )
    assert unexpected["exc"].startswith("Traceback") and "ValueError: boom 7" in unexpected["exc"]

    [permanent] = _task_lines(lines, picky.id, settlement)
    assert permanent["level"] == "ERROR" and permanent["reason"] == "permanent-failure"
    assert "PermanentFailure: value must not be negative" in permanent["exc"]

    [malformed] = [
        line for line in lines if line["logger"] == settlement and line.get("message_id") == "poison-1"
    ]
    assert malformed["level"] == "ERROR" and malformed["reason"] == "bad-json"
    assert "poison-1" in malformed["message"] and "bad-json" in malformed["message"]

    captured = [line for line in lines if line["logger"] == "taskplatform.deadletters.consumer"]
    stored = {line.get("message_id"): line for line in captured if line.get("outcome") == "created"}
    assert stored["poison-1"]["level"] == "WARNING" and stored["poison-1"]["reason"] == "bad-json"
    assert {line.get("task_id") for line in stored.values()} >= {boom.id, picky.id}
