"""What the ``taskplatform`` command says: help texts built from the code's enums, the exit
codes in every help's epilog, failures mapped to one line and a code, and the progress display
(plain lines off a terminal, a redrawn line on one)."""

from __future__ import annotations

import argparse
import io
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from taskplatform.cli import commands as cli
from taskplatform.cli.dlq import BadInput
from taskplatform.cli.output import (
    EXIT_CODE_MEANINGS,
    CommandError,
    CountWatch,
    ExitCode,
    LiveDisplay,
    PlainDisplay,
    TaskWatch,
    api_status_code,
    display_for,
    exit_codes_epilog,
    failure,
    is_live,
)
from taskplatform.client import ApiError
from taskplatform.errors import BrokerError, ConfigError, MessageDecodeError, PermanentFailure, StoreError
from taskplatform.messaging.codec import decode, encode
from taskplatform.models import TERMINAL, BackgroundTask, DeadLetterStatus, SubTaskStatusSummary, TaskStatus
from taskplatform.models.message import HEADER_TASK_ID, TaskMessage
from taskplatform.models.reasons import BROKER_REASONS, DeadLetterReason
from taskplatform.retry import RetryPolicy
from taskplatform.worker.outcomes import Failed, decide

ANSI = re.compile(r"\x1b\[")


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The command path of ``parser`` and of every subcommand below it."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def subparser(*path: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.fixture
def helps(capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, ...], str]:
    """Every command's ``--help`` text (its words: argparse wraps), by command path."""
    texts = {}
    for path in parsers(cli.build_parser()):
        with pytest.raises(SystemExit) as exited:
            cli.build_parser().parse_args([*path, "--help"])
        assert exited.value.code == 0
        texts[path] = " ".join(capsys.readouterr().out.split())
    return texts


# ---------------------------------------------------------------- help texts
def test_every_help_ends_with_every_exit_code_and_its_meaning(helps: dict[tuple[str, ...], str]) -> None:
    assert ("submit",) in helps and ("dlq", "replay") in helps and ("topology",) in helps
    epilog = " ".join(exit_codes_epilog().split())
    for path, text in helps.items():
        assert text.endswith(epilog), path
    for code in ExitCode:
        assert f" {int(code)} {' '.join(EXIT_CODE_MEANINGS[code].split())}" in epilog


def test_exit_codes_are_distinct_and_all_explained() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)


def test_the_reason_help_lists_exactly_the_dead_letter_reasons(helps: dict[tuple[str, ...], str]) -> None:
    for path in (("dlq", "list"), ("dlq", "replay")):
        text = helps[path]
        listed = text.split("--reason REASON why it died: ", 1)[1].split(" when the platform", 1)[0]
        words = set(re.findall(r"[a-z_-]+", listed.replace("or RabbitMQ's", "")))
        assert words == {r.value for r in DeadLetterReason}, path
        for broker in BROKER_REASONS:  # the broker's come after "RabbitMQ's"
            assert listed.index(broker.value) > listed.index("RabbitMQ's")
    assert "expired" not in helps[("dlq", "list")].replace("lease-expired", "")


def test_the_status_choices_of_dlq_list_are_the_dead_letter_statuses() -> None:
    action = subparser("dlq", "list")._option_string_actions["--status"]
    assert list(action.choices or ()) == [s.value for s in DeadLetterStatus] + ["any"]
    assert action.default == DeadLetterStatus.PENDING.value


def test_task_statuses_in_help_come_from_the_task_statuses(helps: dict[tuple[str, ...], str]) -> None:
    ends = ", ".join(sorted(s.value for s in TERMINAL))
    assert f"when it ends ({ends}); exit 0 only for {TaskStatus.COMPLETED.value}" in helps[("submit",)]
    assert f"change a {TaskStatus.QUEUED.value} task's priority" in helps[()]


def test_the_platform_gives_only_reasons_the_enum_lists() -> None:
    """The dead-letter reasons of settlement and of the message codec are DeadLetterReason values."""
    policy = RetryPolicy(max_attempts=1)
    given = {
        decide(Failed(ValueError("x"), ""), attempt=1, policy=policy, retryable=(ValueError,)).reason,
        decide(Failed(PermanentFailure("x"), ""), attempt=1, policy=policy).reason,
        decide(Failed(ValueError("x"), ""), attempt=1, policy=policy).reason,
    }
    good = encode(TaskMessage(task_id="t", task_type="summary"))
    messages = [
        SimpleNamespace(headers={}, body=good.body),
        SimpleNamespace(headers=good.headers, body=b"not json"),
        SimpleNamespace(headers=good.headers, body=b"[1]"),
        SimpleNamespace(headers={**good.headers, HEADER_TASK_ID: "other"}, body=good.body),
    ]
    for message in messages:
        with pytest.raises(MessageDecodeError) as caught:
            decode(message)  # type: ignore[arg-type]
        given.add(caught.value.reason)
    assert given == {
        "attempts-exhausted",
        "permanent-failure",
        "non-retryable",
        "missing-header",
        "bad-json",
        "invalid-body",
        "header-mismatch",
    }
    assert given <= {r.value for r in DeadLetterReason}


# ---------------------------------------------------------------- failures
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, ExitCode.BAD_INPUT),
        (401, ExitCode.DENIED),
        (403, ExitCode.DENIED),
        (404, ExitCode.NOT_FOUND),
        (409, ExitCode.CONFLICT),
        (413, ExitCode.BAD_INPUT),
        (422, ExitCode.BAD_INPUT),
        (429, ExitCode.UNAVAILABLE),
        (500, ExitCode.FAILED),
        (503, ExitCode.UNAVAILABLE),
    ],
)
def test_api_answers_map_to_exit_codes(status: int, code: ExitCode) -> None:
    assert api_status_code(status) is code
    message, found = failure(ApiError(status, "c", "line one\nline two"), "http://api") or ("", None)
    assert found is code
    assert "\n" not in message and message.startswith(f"HTTP {status} c: line one line two")


def test_a_401_says_how_to_get_a_token() -> None:
    message, _ = failure(ApiError(401, "unauthorized", "authentication required"), "http://a") or ("", 0)
    assert "TASKPLATFORM_TOKEN or --token" in message and "taskplatform token" in message


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (BrokerError("cannot connect to RabbitMQ at amqp://h/"), ExitCode.UNAVAILABLE, "cannot connect"),
        (StoreError("cannot reach store sqlite://"), ExitCode.UNAVAILABLE, "cannot reach store"),
        (ConfigError("TASKPLATFORM_X is bad"), ExitCode.BAD_INPUT, "TASKPLATFORM_X is bad"),
        (BadInput("--since is not ISO"), ExitCode.BAD_INPUT, "--since is not ISO"),
        (CommandError("gave up", ExitCode.TIMED_OUT), ExitCode.TIMED_OUT, "gave up"),
    ],
)
def test_platform_failures_map_to_exit_codes(exc: Exception, code: ExitCode, text: str) -> None:
    assert failure(exc, "http://api") == (str(exc), code)
    assert text in str(exc)


def test_an_unreachable_api_is_named_with_its_url_without_a_password() -> None:
    import httpx

    message, code = failure(httpx.ConnectError("refused"), "http://u:pw@api.example:8000") or ("", 0)
    assert code is ExitCode.UNAVAILABLE
    assert message.startswith("cannot reach the API at http://u:***@api.example:8000: ConnectError: refused")
    assert "pw@" not in message


def test_an_unexpected_failure_is_not_mapped() -> None:
    assert failure(ZeroDivisionError("x"), "http://api") is None


# ---------------------------------------------------------------- progress
class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def task(status: TaskStatus, percent: float | None = None, message: str | None = None) -> BackgroundTask:
    progress = None if percent is None else {"percent": percent, **({"message": message} if message else {})}
    return BackgroundTask(id="t1", task_type="test_chatty", status=status, progress=progress)


def test_plain_task_lines_come_on_a_new_status_or_tenth_only() -> None:
    out = io.StringIO()
    watch = TaskWatch(PlainDisplay(out), "t1")
    watch.started("test_chatty", 30)
    for seen in [
        task(TaskStatus.QUEUED),
        task(TaskStatus.QUEUED),
        task(TaskStatus.RUNNING, 1, "step 1"),
        task(TaskStatus.RUNNING, 4, "step 4"),  # same tenth: no line
        task(TaskStatus.RUNNING, 12.5, "step 12"),
        task(TaskStatus.RUNNING, 19, "step 19"),
        task(TaskStatus.COMPLETED, 100, "done"),
    ]:
        watch.update(seen)
    lines = out.getvalue().splitlines()
    assert lines == [
        "submitted task t1 (test_chatty); waiting up to 30s",
        "task t1: QUEUED",
        "task t1: RUNNING 1% (step 1)",
        "task t1: RUNNING 12% (step 12)",
        "task t1: COMPLETED 100% (done)",
    ]


def test_a_parent_shows_its_roll_up() -> None:
    out = io.StringIO()
    parent = BackgroundTask(
        id="p",
        task_type="batch",
        status=TaskStatus.RUNNING,
        sub_task_status_summary=SubTaskStatusSummary(total=4, completed=1, running=3),
    )
    TaskWatch(PlainDisplay(out), "p").update(parent)
    assert out.getvalue() == "task p: RUNNING 25% (1 of 4 sub-tasks finished)\n"


def test_a_control_character_in_a_progress_message_does_not_reach_the_terminal() -> None:
    out = io.StringIO()
    TaskWatch(PlainDisplay(out), "t1").update(task(TaskStatus.RUNNING, 50, "evil\x1b[2Jclear"))
    assert "\x1b" not in out.getvalue() and "evil?[2Jclear" in out.getvalue()


def test_plain_count_lines_come_per_tenth() -> None:
    out = io.StringIO()
    watch = CountWatch(PlainDisplay(out), "replayed", 20)
    for done in (0, 1, 2, 3, 10, 11, 25):
        watch.update(done)
    assert out.getvalue().splitlines() == [
        "replayed: 0/20",
        "replayed: 2/20",
        "replayed: 10/20",
        "replayed: 20/20",  # never past the total
    ]


def test_off_a_terminal_the_display_is_plain_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert not is_live(io.StringIO())
    assert isinstance(display_for(io.StringIO()), PlainDisplay)


@pytest.mark.parametrize(("name", "value"), [("TERM", "dumb"), ("TTY_INTERACTIVE", "0")])
def test_a_terminal_that_cannot_redraw_gets_plain_lines(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert not is_live(Terminal())


def test_on_a_terminal_the_task_line_is_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    out = Terminal()
    display = display_for(out)
    assert isinstance(display, LiveDisplay)
    watch = TaskWatch(display, "t1")
    watch.started("test_chatty", 30)
    watch.update(task(TaskStatus.RUNNING, 42, "step 42"))
    display.show("task t1 RUNNING", 42, 100, "step 42")
    watch.finished(task(TaskStatus.COMPLETED, 100))
    text = out.getvalue()
    assert ANSI.search(text)  # cursor control: the line is redrawn
    assert "task t1 RUNNING" in text and "42%" in text and "step 42" in text
    assert "submitted task t1 (test_chatty); waiting up to 30s" in text
    assert "task t1: COMPLETED after" in text


def test_a_message_left_empty_by_its_cause_names_the_cause() -> None:
    try:
        try:
            raise TimeoutError
        except TimeoutError as cause:
            raise BrokerError("cannot connect to RabbitMQ at amqp://h/: ") from cause
    except BrokerError as exc:
        assert failure(exc, "http://api") == (
            "cannot connect to RabbitMQ at amqp://h/: TimeoutError",
            ExitCode.UNAVAILABLE,
        )
