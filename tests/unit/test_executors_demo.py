"""The demo executable: each mode's outcome, how the platform settles it, its parameters, and
that only ``taskplatform dev`` loads it."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from pydantic import ValidationError

from executors.demo import Demo, DemoFailure
from taskplatform.cli.commands import _settings, build_parser
from taskplatform.errors import Cancelled, PermanentFailure
from taskplatform.models import TaskStatus
from taskplatform.retry import RetryPolicy
from taskplatform.tasks.executable import Progress
from taskplatform.tasks.registry import DEMO_MODULE, ExecutableRegistry
from taskplatform.testing import FakeTaskContext, run_task
from taskplatform.worker.outcomes import Action, Failed, Succeeded, decide


def demo_context(params: Demo.Params, *, cancel_after: int | None = None) -> FakeTaskContext[Demo.Params]:
    """After ``cancel_after`` progress reports, the task's cancellation is requested."""
    return FakeTaskContext(params, task_type="demo", cancel_after_progress=cancel_after)


async def run(params: dict[str, Any], *, attempt: int = 0) -> Demo.Result:
    return await run_task(Demo, params, ctx=FakeTaskContext(None, attempt=attempt))


#: The platform's default: three attempts.
POLICY = RetryPolicy(max_attempts=3)


def settle(exc: BaseException, attempt: int) -> Any:
    return decide(
        Failed(exc, ""),
        attempt=attempt,
        policy=POLICY,
        retryable=Demo.retryable_exceptions,
        non_retryable=Demo.non_retryable_exceptions,
    )


# ------------------------------------------------------------ modes
async def test_succeed_returns_the_message_and_the_attempt() -> None:
    result = await run({"message": "hello"}, attempt=2)
    assert result == Demo.Result(
        mode="succeed", attempt=2, failed_attempts=0, slept_seconds=0.0, message="hello"
    )
    assert decide(Succeeded(result), attempt=2, policy=RetryPolicy()).status is TaskStatus.COMPLETED


async def test_fail_raises_a_permanent_failure_that_dead_letters_at_once() -> None:
    with pytest.raises(PermanentFailure, match="failing on purpose: disk full") as caught:
        await run({"mode": "fail", "message": "disk full"})
    decision = settle(caught.value, attempt=0)
    assert (decision.status, decision.action, decision.reason) == (
        TaskStatus.DEAD_LETTER,
        Action.DEAD_LETTER,
        "permanent-failure",
    )


async def test_retry_fails_the_first_attempts_then_succeeds() -> None:
    outcomes: list[str] = []
    for attempt in range(3):
        try:
            result = await run({"mode": "retry", "failures": 2}, attempt=attempt)
        except DemoFailure as exc:
            assert f"attempt {attempt + 1} of the 2" in str(exc)
            decision = settle(exc, attempt)
            assert decision.action is Action.RETRY_LATER
            outcomes.append(decision.status.value)
        else:
            outcomes.append("succeeded")
            assert (result.attempt, result.failed_attempts) == (2, 2)
    assert outcomes == ["RETRYING", "RETRYING", "succeeded"]


async def test_retry_with_more_failures_than_attempts_ends_dead_letter_attempts_exhausted() -> None:
    with pytest.raises(DemoFailure) as caught:
        await run({"mode": "retry", "failures": 3}, attempt=2)
    decision = settle(caught.value, attempt=2)
    assert (decision.status, decision.reason) == (TaskStatus.DEAD_LETTER, "attempts-exhausted")


async def test_retry_with_no_failures_succeeds_at_once() -> None:
    result = await run({"mode": "retry", "failures": 0})
    assert (result.mode, result.attempt, result.failed_attempts) == ("retry", 0, 0)


async def test_sleep_sleeps_the_seconds_asked_reporting_progress() -> None:
    context = demo_context(Demo.Params(mode="sleep", seconds=0.3))
    result = await Demo().execute(context)
    assert result.mode == "sleep" and result.slept_seconds >= 0.3
    assert context.progress and all(isinstance(p, Progress) for p in context.progress)
    assert context.progress[0] == Progress(percent=0.0, message="slept 0 of 0.3 s")


async def test_sleep_stops_with_cancelled_once_the_task_is_cancelled() -> None:
    context = demo_context(Demo.Params(mode="sleep", seconds=3600), cancel_after=2)
    with pytest.raises(Cancelled, match="of 3600 s") as caught:
        await Demo().execute(context)
    assert len(context.progress) == 2
    assert settle(caught.value, attempt=0).status is TaskStatus.CANCELLED


# ------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"mode": "fail", "seconds": 5}, "mode 'fail' does not use seconds (its parameters: none)"),
        ({"mode": "sleep", "failures": 2}, "mode 'sleep' does not use failures (its parameters: seconds)"),
        ({"failures": 1, "seconds": 1}, "mode 'succeed' does not use failures, seconds"),
        ({"mode": "explode"}, "Input should be 'succeed', 'fail', 'retry' or 'sleep'"),
        ({"mode": "retry", "failures": -1}, "greater than or equal to 0"),
        ({"mode": "sleep", "seconds": 3601}, "less than or equal to 3600"),
        ({"mode": "sleep", "sleep": 3}, "Extra inputs are not permitted"),
    ],
)
def test_parameters_a_mode_does_not_use_or_out_of_range_are_refused(
    params: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Demo.Params(**params)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "params",
    [{}, {"mode": "fail", "message": "m"}, {"mode": "retry", "failures": 2}, {"mode": "sleep", "seconds": 5}],
)
def test_parameters_survive_the_store_round_trip(params: dict[str, Any]) -> None:
    # The API stores the validated parameters dumped whole; the worker validates them again.
    stored = Demo.Params(**params).model_dump(mode="json")
    assert Demo.Params.model_validate(stored) == Demo.Params(**params)


async def test_retry_and_sleep_have_defaults() -> None:
    with pytest.raises(DemoFailure, match="attempt 1 of the 1 asked for"):
        await run({"mode": "retry"})
    assert (await run({"mode": "retry"}, attempt=1)).failed_attempts == 1
    context = demo_context(Demo.Params(mode="sleep"), cancel_after=1)
    with pytest.raises(Cancelled, match="of 60 s"):
        await Demo().execute(context)


def test_the_demo_is_a_valid_executable_in_a_queue_group_of_its_own() -> None:
    registry = ExecutableRegistry()
    assert registry.load_module(DEMO_MODULE) == 1
    assert registry.get("demo") is Demo
    assert registry.queues() == {"demo": ["demo"]}


# ------------------------------------------------------------ who loads it
def _parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_entry_points_do_not_include_the_demo() -> None:
    assert "demo" not in ExecutableRegistry.discover()


def test_dev_adds_the_demo_module_and_worker_and_api_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_EXECUTOR_MODULES", '["tests.support.executables"]')
    assert _settings(_parsed("dev")).executor_modules == ["tests.support.executables", DEMO_MODULE]
    assert _settings(_parsed("worker")).executor_modules == ["tests.support.executables"]
    assert _settings(_parsed("api")).executor_modules == ["tests.support.executables"]


def test_dev_does_not_add_the_demo_module_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_EXECUTOR_MODULES", f'["{DEMO_MODULE}"]')
    assert _settings(_parsed("dev")).executor_modules == [DEMO_MODULE]
    assert _settings(_parsed("worker")).executor_modules == [DEMO_MODULE]  # configured: loaded
