"""``run_command`` with real processes: output, exit codes, bounds, time-out and cancel killing the
whole process group, injection attempts, the environment and the working directory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from taskplatform.agent import RunCommand, RunCommandParams, agent_executable
from taskplatform.agent.executable import (
    CommandFailed,
    CommandFailedRetryable,
    CommandProgress,
    CommandRefused,
    CommandTimedOut,
)
from taskplatform.agent.templates import BASE_ENVIRONMENT
from taskplatform.errors import Cancelled, PermanentFailure
from taskplatform.retry import Verdict, classify
from taskplatform.testing import FakeTaskContext, run_task
from tests.agent.processes import alive, group_of, live_members, read_pid, wait_for

PYTHON = sys.executable
Agent = Callable[..., type[RunCommand]]


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    """Writes the templates to an allow-list file and loads it as the worker would."""

    def build(*commands: dict[str, Any], kill_grace_seconds: float = 5.0) -> type[RunCommand]:
        path = tmp_path / "commands.json"
        path.write_text(json.dumps({"commands": list(commands)}))
        return agent_executable(path, kill_grace_seconds=kill_grace_seconds)

    return build


@pytest.fixture
def leftovers() -> Iterator[list[tuple[int, int]]]:
    """(pid, pgid) of processes a test started through a command: killed at teardown if a failed
    test left them running (only while still in that group, so a reused pid is never hit)."""
    started: list[tuple[int, int]] = []
    yield started
    for pid, pgid in started:
        if alive(pid) and group_of(pid) == pgid:
            os.kill(pid, signal.SIGKILL)


def verdict(cls: type[RunCommand], exc: BaseException) -> Verdict:
    """What the worker's settlement makes of ``exc`` raised by ``cls``."""
    return classify(exc, retryable=cls.retryable_exceptions, non_retryable=cls.non_retryable_exceptions)


# ---------------------------------------------------------------- exit codes and output
async def test_a_command_that_exits_0_returns_its_output(agent: Agent) -> None:
    script = "import sys; print('hello'); print('warn', file=sys.stderr)"
    cls = agent({"name": "hello", "argv": [PYTHON, "-c", script]})

    result = await run_task(cls, {"template": "hello"})

    assert (result.template, result.exit_code) == ("hello", 0)
    assert (result.stdout, result.stderr) == ("hello\n", "warn\n")
    assert (result.stdout_truncated, result.stderr_truncated) == (False, False)
    assert (result.stdout_bytes, result.stderr_bytes) == (6, 5)
    assert result.duration_seconds >= 0


async def test_a_non_zero_exit_fails_the_task_for_good_naming_the_code_and_the_stderr_tail(
    agent: Agent,
) -> None:
    cls = agent({"name": "broken", "argv": ["/bin/sh", "-c", "echo partial; echo broken >&2; exit 3"]})

    with pytest.raises(
        CommandFailed, match="command 'broken' exited with code 3; stderr ends: broken"
    ) as caught:
        await run_task(cls, {"template": "broken"})

    assert isinstance(caught.value, PermanentFailure)
    assert verdict(cls, caught.value) is Verdict.FAIL


async def test_a_command_killed_by_a_signal_says_which(agent: Agent) -> None:
    cls = agent({"name": "suicide", "argv": ["/bin/sh", "-c", "kill -9 $$"]})
    with pytest.raises(CommandFailed, match="command 'suicide' was killed by signal 9"):
        await run_task(cls, {"template": "suicide"})


async def test_only_the_exit_codes_the_template_lists_are_retried(agent: Agent) -> None:
    cls = agent(
        {
            "name": "flaky",
            "argv": ["/bin/sh", "-c", 'exit "$1"', "sh", "{code}"],
            "placeholders": {"code": {"type": "int", "min": 0, "max": 255}},
            "retryable_exit_codes": [75],
        }
    )
    with pytest.raises(CommandFailedRetryable, match="exited with code 75") as retryable:
        await run_task(cls, {"template": "flaky", "args": {"code": 75}})
    with pytest.raises(CommandFailed, match="exited with code 3") as permanent:
        await run_task(cls, {"template": "flaky", "args": {"code": 3}})

    assert verdict(cls, retryable.value) is Verdict.RETRY
    assert verdict(cls, permanent.value) is Verdict.FAIL


async def test_output_over_the_bound_keeps_the_tail_flags_it_and_counts_every_byte(agent: Agent) -> None:
    script = (
        "import sys\n"
        "for i in range(20000): sys.stdout.write('out %06d\\n' % i)\n"
        "for i in range(20000): sys.stderr.write('err %06d\\n' % i)\n"
    )
    cls = agent({"name": "chatty", "argv": [PYTHON, "-c", script], "max_output_bytes": 1000})
    out = "".join(f"out {i:06d}\n" for i in range(20000))
    err = "".join(f"err {i:06d}\n" for i in range(20000))

    result = await run_task(cls, {"template": "chatty"})

    assert (result.stdout, result.stderr) == (out[-1000:], err[-1000:])
    assert (result.stdout_truncated, result.stderr_truncated) == (True, True)
    assert (result.stdout_bytes, result.stderr_bytes) == (len(out), len(err))


async def test_output_is_reported_as_progress_while_the_command_runs(agent: Agent, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "print('first line', flush=True)\n"
        "go = pathlib.Path(sys.argv[1])\n"
        "for _ in range(600):\n"
        "    if go.exists(): break\n"
        "    time.sleep(0.1)\n"
        "print('done')\n"
    )
    cls = agent({"name": "slow", "argv": [PYTHON, "-c", script, str(go)]})
    ctx: FakeTaskContext[Any] = FakeTaskContext(None)
    running = asyncio.create_task(run_task(cls, {"template": "slow"}, ctx=ctx))

    def reported() -> bool:
        return any(isinstance(p, CommandProgress) and "first line" in p.stdout_tail for p in ctx.progress)

    await wait_for(lambda: reported() or running.done(), "a progress report with the first line")
    go.touch()
    result = await running

    assert reported()
    assert result.stdout == "first line\ndone\n"
    first = next(p for p in ctx.progress if isinstance(p, CommandProgress))
    assert first.message is not None and first.message.startswith("slow: running for")
    assert first.stdout_bytes == len("first line\n")


# ---------------------------------------------------------------- time-out and cancel
def stuck_script(leader: Path, grandchild: Path) -> list[str]:
    """A shell that writes its pid, starts a grandchild that ignores SIGTERM, and waits."""
    script = f'echo $$ > {leader}; (trap "" TERM; exec sleep 1000) & echo $! > {grandchild}; wait'
    return ["/bin/sh", "-c", script]


async def start_stuck(
    agent: Agent, tmp_path: Path, timeout: float, ctx: FakeTaskContext[Any], leftovers: list[tuple[int, int]]
) -> Any:
    """The stuck command running as a task, once its grandchild is up: (task, pgid, grandchild)."""
    leader, grandchild = tmp_path / "leader.pid", tmp_path / "grandchild.pid"
    cls = agent(
        {"name": "stuck", "argv": stuck_script(leader, grandchild), "timeout_seconds": timeout},
        kill_grace_seconds=0.5,
    )
    running = asyncio.create_task(run_task(cls, {"template": "stuck"}, ctx=ctx))
    await wait_for(lambda: read_pid(grandchild) is not None or running.done(), "the grandchild's pid")
    pgid, child = read_pid(leader), read_pid(grandchild)
    assert pgid is not None and child is not None, "the command ended before it started its grandchild"
    leftovers.extend([(pgid, group_of(pgid) or -1), (child, group_of(child) or -1)])
    assert alive(child) and group_of(child) == pgid
    assert pgid != os.getpgid(0)  # a group of its own, not the test's
    return running, pgid, child


@pytest.mark.slow
async def test_a_timeout_kills_the_whole_group_a_grandchild_ignoring_sigterm_included(
    agent: Agent, tmp_path: Path, leftovers: list[tuple[int, int]]
) -> None:
    running, pgid, child = await start_stuck(agent, tmp_path, 3, FakeTaskContext(None), leftovers)

    with pytest.raises(
        CommandTimedOut, match=r"command 'stuck' timed out after 3 s; its process group was killed"
    ):
        await running

    assert live_members(pgid) == []
    assert not alive(child)


async def test_a_cancel_request_kills_the_whole_group(
    agent: Agent, tmp_path: Path, leftovers: list[tuple[int, int]]
) -> None:
    ctx: FakeTaskContext[Any] = FakeTaskContext(None)
    running, pgid, child = await start_stuck(agent, tmp_path, 120, ctx, leftovers)

    ctx.cancelled = True
    with pytest.raises(Cancelled, match="command 'stuck' cancelled; its process group was killed"):
        await running

    assert live_members(pgid) == []
    assert not alive(child)


async def test_an_attempt_stopped_from_outside_kills_the_whole_group_at_once(
    agent: Agent, tmp_path: Path, leftovers: list[tuple[int, int]]
) -> None:
    """What the worker does when a cancelled attempt overstays CANCEL_GRACE_SECONDS, or on shutdown."""
    running, pgid, child = await start_stuck(agent, tmp_path, 120, FakeTaskContext(None), leftovers)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert live_members(pgid) == []
    assert not alive(child)


async def test_processes_left_behind_by_a_command_that_exited_are_killed(
    agent: Agent, tmp_path: Path, leftovers: list[tuple[int, int]]
) -> None:
    grandchild = tmp_path / "grandchild.pid"
    script = f"(exec sleep 1000) & echo $! > {grandchild}; echo bye"
    cls = agent({"name": "leaves", "argv": ["/bin/sh", "-c", script]}, kill_grace_seconds=0.5)

    result = await run_task(cls, {"template": "leaves"})

    child = read_pid(grandchild)
    assert child is not None and result.stdout == "bye\n"
    leftovers.append((child, group_of(child) or -1))
    assert not alive(child)


# ---------------------------------------------------------------- refusals and injection
async def test_an_unknown_template_or_a_refused_argument_fails_for_good_and_runs_nothing(
    agent: Agent, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    cls = agent(
        {
            "name": "touch",
            "argv": ["/usr/bin/touch", str(marker), "{when}"],
            "placeholders": {"when": {"type": "int", "min": 0}},
        }
    )
    cases = [
        ({"template": "nope"}, "unknown template 'nope'; this agent allows: touch"),
        ({"template": "touch"}, "missing argument"),
        ({"template": "touch", "args": {"when": 1, "also": "x"}}, "unknown argument"),
        ({"template": "touch", "args": {"when": "1; id"}}, "argument 'when' \\(int\\): must be an integer"),
        ({"template": "touch", "args": {"when": -1}}, "below the minimum 0"),
    ]
    for params, why in cases:
        with pytest.raises(CommandRefused, match=why) as caught:
            await run_task(cls, params)
        assert verdict(cls, caught.value) is Verdict.FAIL
    assert not marker.exists()


async def test_a_program_that_cannot_start_is_refused(agent: Agent) -> None:
    cls = agent({"name": "ghost", "argv": ["/nonexistent/program"]})
    with pytest.raises(CommandRefused, match="cannot start '/nonexistent/program'"):
        await run_task(cls, {"template": "ghost"})


def test_parameters_are_checked_for_structure_before_any_allow_list() -> None:
    assert RunCommandParams.model_validate({"template": "x", "args": {"a": "1", "b": 2}}).args == {
        "a": "1",
        "b": 2,
    }
    for bad in (
        {"template": "Bad Name"},
        {"template": "x", "args": {"a": 1.5}},
        {"template": "x", "args": {"a": True}},
        {"template": "x", "args": {"A-B": "1"}},
        {"template": "x", "args": "a=1"},
        {"template": "x", "shell": True},
    ):
        with pytest.raises(ValidationError):
            RunCommandParams.model_validate(bad)


INJECTIONS = ["; touch {m}", "&& touch {m}", "| touch {m}", "$(touch {m})", "`touch {m}`", "> {m}", "* {m}"]


@pytest.mark.parametrize("attempt", INJECTIONS)
async def test_shell_syntax_in_a_value_reaches_the_program_as_literal_text(
    agent: Agent, tmp_path: Path, attempt: str
) -> None:
    marker = tmp_path / "injected"
    value = attempt.format(m=marker)
    cls = agent({"name": "echo", "argv": ["/bin/echo", "{msg}"], "placeholders": {"msg": {"type": "str"}}})

    result = await run_task(cls, {"template": "echo", "args": {"msg": value}})

    assert result.stdout == value + "\n"
    assert not marker.exists()


async def test_a_newline_is_refused_unless_the_pattern_allows_it_and_then_stays_one_argument(
    agent: Agent, tmp_path: Path
) -> None:
    marker = tmp_path / "injected"
    value = f"x\ntouch {marker}\n$(touch {marker}); `touch {marker}`"
    show_argv = "import json, sys; print(json.dumps(sys.argv[1:]))"
    cls = agent(
        {"name": "echo", "argv": ["/bin/echo", "{msg}"], "placeholders": {"msg": {"type": "str"}}},
        {
            "name": "show",
            "argv": [PYTHON, "-c", show_argv, "{msg}", "--opt={msg}"],
            "placeholders": {"msg": {"type": "str", "pattern": "(?s).*"}},
        },
    )

    with pytest.raises(CommandRefused, match="contains the control character '\\\\n'"):
        await run_task(cls, {"template": "echo", "args": {"msg": value}})
    result = await run_task(cls, {"template": "show", "args": {"msg": value}})

    assert json.loads(result.stdout) == [value, f"--opt={value}"]
    assert not marker.exists()


# ---------------------------------------------------------------- environment and directory
async def test_the_environment_is_the_minimal_one_plus_the_template_s(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLATFORM_AGENT_TEST_SECRET", "must-not-leak")
    cls = agent({"name": "env", "argv": ["/usr/bin/env"], "env": {"EXTRA": "yes", "LANG": "C"}})

    result = await run_task(cls, {"template": "env"})

    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert seen == {**BASE_ENVIRONMENT, "EXTRA": "yes", "LANG": "C"}


async def test_the_command_runs_in_the_template_s_directory(agent: Agent, tmp_path: Path) -> None:
    show_cwd = "import os; print(os.getcwd())"
    cls = agent(
        {"name": "here", "argv": [PYTHON, "-c", show_cwd], "cwd": str(tmp_path)},
        {"name": "root", "argv": [PYTHON, "-c", show_cwd]},
    )

    here = await run_task(cls, {"template": "here"})
    root = await run_task(cls, {"template": "root"})

    assert here.stdout == os.path.realpath(tmp_path) + "\n"
    assert root.stdout == "/\n"
