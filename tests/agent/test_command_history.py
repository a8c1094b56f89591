"""A command that runs past its time-out, run by a real worker (real RabbitMQ, SQLite): its
process group is killed and its attempt is in the task's history as ``timed-out``, naming the
error; a command that succeeds is ``completed``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskplatform.agent import agent_executable
from taskplatform.models import TaskStatus
from taskplatform.models.attempt import AttemptOutcome
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.executables import EXECUTABLES
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration


def _commands(tmp_path: Path) -> Path:
    path = tmp_path / "commands.json"
    templates = [
        {"name": "hello", "argv": ["/bin/echo", "hello"]},
        {"name": "stuck", "argv": ["/bin/sleep", "30"], "timeout_seconds": 1},
    ]
    path.write_text(json.dumps({"commands": templates}))
    return path


async def test_a_command_past_its_time_out_is_a_timed_out_attempt(
    make_settings: Callable[..., PlatformSettings], tmp_path: Path, rabbitmq: Any
) -> None:
    registry = ExecutableRegistry(
        [*EXECUTABLES, agent_executable(_commands(tmp_path), kill_grace_seconds=0.5)]
    )
    runtime = Runtime(make_settings(), role="worker", registry=registry, consume=True, relay=True)
    async with running(runtime):
        stuck = await runtime.submitter.submit(
            SubmitRequest(task_type="run_command", parameters={"template": "stuck", "args": {}})
        )
        hello = await runtime.submitter.submit(
            SubmitRequest(task_type="run_command", parameters={"template": "hello", "args": {}})
        )

        async def ended() -> bool:
            tasks = [await runtime.store.get(t.task.id) for t in (stuck, hello)]
            return all(
                t is not None and t.status in (TaskStatus.COMPLETED, TaskStatus.DEAD_LETTER) for t in tasks
            )

        await eventually(ended, timeout=30)

        async def recorded() -> bool:  # on SQLite a completion's record follows it on its connection
            return all([await runtime.store.list_attempts(t.task.id) for t in (stuck, hello)])

        await eventually(recorded, timeout=10)
        [timed_out] = await runtime.store.list_attempts(stuck.task.id)
        [completed] = await runtime.store.list_attempts(hello.task.id)
    assert timed_out.outcome is AttemptOutcome.TIMED_OUT and timed_out.error_type == "CommandTimedOut"
    assert timed_out.error_message is not None and "timed out after 1 s" in timed_out.error_message
    assert timed_out.duration_seconds is not None and 1.0 <= timed_out.duration_seconds
    assert not timed_out.retried and timed_out.node_id == runtime.settings.node_id
    assert completed.outcome is AttemptOutcome.COMPLETED and completed.error_type is None
