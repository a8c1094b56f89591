"""``taskplatform submit|status|cancel|update|delete`` (and the other one-shot commands) against
a fake API: ``submit --wait`` shows the id at once and the task's progress, gives up with exit
124 on ``--timeout``; every usual failure is one line on stderr and a documented exit code."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from taskplatform.cli import commands as cli
from taskplatform.cli import tasks as cli_tasks
from taskplatform.cli.admin import broker_place
from taskplatform.cli.output import ExitCode
from taskplatform.client import TaskPlatformClient
from tests.support.fake_api import BASE, FakeApi, api_for_cli, body, cli_environment, error_body, one_line


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cli_tasks, "WAIT_POLL_SECONDS", 0.001)
    with cli_environment(monkeypatch):
        yield


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """The commands' client talks to a fake API."""
    return api_for_cli(monkeypatch)


def task(status: str, percent: float | None = None, message: str | None = None) -> dict[str, Any]:
    progress = None if percent is None else {"percent": percent, "message": message}
    return {"id": "t1", "task_type": "test_chatty", "status": status, "progress": progress}


def answers(*tasks: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    """Each GET gets the next of ``tasks``; the last one for ever after."""
    left = list(tasks)

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=left.pop(0) if len(left) > 1 else left[0])

    return handle


def submitted(api: FakeApi) -> None:
    api.on("POST", "/api/v1/tasks", httpx.Response(201, json={"task_id": "t1", "status": "QUEUED"}))


# ---------------------------------------------------------------- submit --wait
def test_submit_wait_prints_the_id_at_once_then_progress_then_the_task(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    submitted(api)
    api.routes[("GET", "/api/v1/tasks/t1")] = answers(
        task("QUEUED"),
        task("RUNNING", 10, "step 1"),
        task("RUNNING", 15, "step 2"),
        task("RUNNING", 55, "step 6"),
        task("COMPLETED", 100, "step 10"),
    )
    code = cli.main(["submit", "test_chatty", "--params", '{"updates": 10}', "--wait", "--timeout", "30"])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[:5] == [
        "submitted task t1 (test_chatty); waiting up to 30s",
        "task t1: QUEUED",
        "task t1: RUNNING 10% (step 1)",
        "task t1: RUNNING 55% (step 6)",
        "task t1: COMPLETED 100% (step 10)",
    ]
    assert lines[5].startswith("task t1: COMPLETED after ") and len(lines) == 6
    assert "\x1b" not in captured.err  # not a terminal: no control codes
    assert json.loads(captured.out)["status"] == "COMPLETED"
    assert body(api.requests[0])["parameters"] == {"updates": 10}


def test_submit_wait_for_a_task_that_dies_prints_it_and_exits_1(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    submitted(api)
    api.on("GET", "/api/v1/tasks/t1", task("DEAD_LETTER"))
    assert cli.main(["submit", "test_boom", "--wait"]) == ExitCode.FAILED
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "DEAD_LETTER"
    assert captured.err.splitlines()[-1].startswith("task t1: DEAD_LETTER after ")


def test_submit_wait_timing_out_says_so_in_one_line_and_exits_124(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    submitted(api)
    api.on("GET", "/api/v1/tasks/t1", task("RUNNING", 30))
    assert cli.main(["submit", "test_chatty", "--wait", "--timeout", "0.05"]) == 124
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0] == "submitted task t1 (test_chatty); waiting up to 0.05s"
    assert lines[1] == "task t1: RUNNING 30%"
    assert lines[2:] == [
        "error: gave up waiting after 0.05s: task t1 is still RUNNING; it goes on "
        "(see it: taskplatform status t1; stop it: taskplatform cancel t1)"
    ]
    assert json.loads(captured.out)["id"] == "t1"  # the task as last seen, for scripts


def test_submit_without_wait_prints_the_id(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    submitted(api)
    assert cli.main(["submit", "test_noop", "--tag", "a", "--priority", "9"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task_id": "t1"}
    assert (body(api.only)["tags"], body(api.only)["priority"]) == (["a"], 9)


# ---------------------------------------------------------------- bad input: no request
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "x", "--params", '{"a": '], "error: --params is not valid JSON: "),
        (["submit", "x", "--params", "[1]"], "error: --params must be a JSON object, got list"),
        (["update", "t1"], "error: give at least one of --priority, --tag, --metadata"),
        (["update", "t1", "--metadata", "3"], "error: --metadata must be a JSON object, got int"),
    ],
)
def test_bad_json_input_is_one_line_exit_2_and_no_request(
    api: FakeApi, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 2
    assert one_line(capsys.readouterr().err).startswith(message)
    assert api.requests == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "x", "--priority", "10"], "argument --priority: must be between 0 and 9, got 10"),
        (["update", "t1", "--priority", "-1"], "argument --priority: must be between 0 and 9, got -1"),
        (["submit", "x", "--wait", "--timeout", "0"], "argument --timeout: must be greater than 0, got 0"),
        (["submit", "x", "--timeout", "soon"], "argument --timeout: not a number: 'soon'"),
        (["topology", "check"], "argument action: invalid choice: 'check'"),
    ],
)
def test_bad_arguments_exit_2_with_the_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: ") and "Traceback" not in err


# ---------------------------------------------------------------- API answers
@pytest.mark.parametrize(
    ("argv", "route", "answer", "code"),
    [
        (["status", "t1"], ("GET", "/api/v1/tasks/t1"), error_body(404, "not_found", "no task"), 5),
        (["cancel", "t1"], ("POST", "/api/v1/tasks/t1/cancel"), error_body(409, "conflict", "finished"), 6),
        (["delete", "t1"], ("DELETE", "/api/v1/tasks/t1"), error_body(403, "forbidden", "not yours"), 4),
        (["submit", "nope"], ("POST", "/api/v1/tasks"), error_body(422, "unknown_task_type", "nope"), 2),
        (["update", "t1", "--tag", "a"], ("PATCH", "/api/v1/tasks/t1"), error_body(503, "busy", "later"), 3),
        (["status", "t1"], ("GET", "/api/v1/tasks/t1"), httpx.Response(500, text="Internal Server Error"), 1),
    ],
)
def test_an_api_error_is_one_line_with_its_exit_code(
    api: FakeApi,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    route: tuple[str, str],
    answer: httpx.Response,
    code: int,
) -> None:
    api.routes[route] = answer
    assert cli.main(argv) == code
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(f"error: HTTP {answer.status_code} ")
    assert captured.out == ""


def test_a_401_says_where_a_token_comes_from(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", "/api/v1/tasks/t1", error_body(401, "unauthorized", "authentication required"))
    assert cli.main(["status", "t1"]) == 4
    assert one_line(capsys.readouterr().err) == (
        "error: HTTP 401 unauthorized: authentication required (give a token: TASKPLATFORM_TOKEN or "
        "--token; 'taskplatform token' mints one)"
    )


def test_an_answer_that_is_not_json_is_one_line(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", "/api/v1/tasks/t1", httpx.Response(200, text="<html>hello</html>"))
    assert cli.main(["status", "t1"]) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: HTTP 200 not_json: the answer to GET /api/v1/tasks/t1 is not JSON")
    assert f"is {BASE} the taskplatform API?" in err


def test_a_json_answer_of_another_shape_is_one_line(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", "/api/v1/tasks/t1", {"hello": "world"})
    assert cli.main(["status", "t1"]) == 1
    assert one_line(capsys.readouterr().err).startswith(f"error: unexpected answer from the API at {BASE}: ")


def test_an_unreachable_api_is_one_line_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_API_URL", "http://127.0.0.1:1")  # nothing listens
    for argv in (["status", "t1"], ["submit", "x", "--wait"], ["dlq", "list"]):
        assert cli.main(argv) == 3
        err = one_line(capsys.readouterr().err)
        assert err.startswith("error: cannot reach the API at http://127.0.0.1:1: ConnectError"), argv
        assert "TASKPLATFORM_API_URL or --api-url" in err


def test_a_failure_nobody_expects_is_one_line_and_exit_1(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(*_: Any) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_tasks, "status", broken)
    assert cli.main(["status", "t1"]) == 1
    assert one_line(capsys.readouterr().err) == (
        "error: unexpected ZeroDivisionError: division by zero "
        "(TASKPLATFORM_LOG_LEVEL=DEBUG shows the traceback)"
    )


def test_the_traceback_of_an_unexpected_failure_is_logged_at_debug(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(*_: Any) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_tasks, "status", broken)
    monkeypatch.setenv("TASKPLATFORM_LOG_LEVEL", "DEBUG")
    assert cli.main(["status", "t1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ZeroDivisionError("division by zero")' in err
    assert err.splitlines()[-1].startswith("error: unexpected ZeroDivisionError: division by zero")


def test_an_invalid_setting_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_API_PORT", "eighty")
    assert cli.main(["status", "t1"]) == 2
    assert one_line(capsys.readouterr().err).startswith(
        "error: invalid configuration: TASKPLATFORM_API_PORT: Input should be a valid integer"
    )


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted(*_: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_tasks, "status", interrupted)
    assert cli.main(["status", "t1"]) == 130


# ---------------------------------------------------------------- broker and store
def test_an_unreachable_broker_is_one_line_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_AMQP_URL", "amqp://guest:s3cret@127.0.0.1:1/")
    assert cli.main(["topology", "verify"]) == 3
    err = one_line(capsys.readouterr().err)  # the client library's own log of it is quiet
    assert err.startswith("error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/")
    assert "s3cret" not in err
    assert logging.getLogger("aiormq").level < logging.CRITICAL  # quiet only meanwhile


def test_an_unreachable_store_is_one_line_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_STORE_URL", "postgresql+asyncpg://u:s3cret@127.0.0.1:1/db")
    assert cli.main(["db", "upgrade"]) == 3
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: cannot reach store postgresql+asyncpg://u:***@127.0.0.1:1/db")
    assert "s3cret" not in err


def test_a_configuration_problem_of_a_server_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_AUTH", "jwt")  # and no secret
    monkeypatch.setenv("TASKPLATFORM_STORE_URL", "sqlite+aiosqlite:///:memory:")
    assert cli.main(["api", "--port", "1"]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: HS256 needs TASKPLATFORM_JWT_SECRET")


@pytest.mark.parametrize(
    ("url", "place"),
    [
        ("amqp://guest:guest@rabbit", "vhost '/' on rabbit:5672"),
        ("amqp://guest:guest@rabbit/", "vhost '/' on rabbit:5672"),
        ("amqp://guest:guest@rabbit/%2F", "vhost '/' on rabbit:5672"),
        ("amqp://guest:guest@rabbit:5673/prod", "vhost 'prod' on rabbit:5673"),
        ("amqps://guest:guest@rabbit/a%2Fb", "vhost 'a/b' on rabbit:5671"),
    ],
)
def test_the_topology_commands_name_the_vhost(url: str, place: str) -> None:
    from taskplatform.settings import PlatformSettings

    assert broker_place(PlatformSettings(amqp_url=url)) == f"{place}, no prefix"
    prefixed = PlatformSettings(amqp_url=url, topology_prefix="blue.")
    assert broker_place(prefixed) == f"{place}, prefix 'blue.'"


# ---------------------------------------------------------------- the client's wait
async def test_client_wait_reports_each_read_and_times_out_with_the_task_as_last_seen() -> None:
    from taskplatform.client import WaitTimedOut

    fake = FakeApi()
    fake.routes[("GET", "/api/v1/tasks/t1")] = answers(task("QUEUED"), task("RUNNING", 40))
    seen: list[tuple[str, Any]] = []
    async with TaskPlatformClient(BASE, transport=fake.transport) as client:
        with pytest.raises(TimeoutError) as caught:  # still a TimeoutError, as before
            await client.wait(
                "t1", timeout=0.05, poll=0.001, on_update=lambda t: seen.append((t.status, t.progress))
            )
    assert isinstance(caught.value, WaitTimedOut)
    assert caught.value.task.status == "RUNNING" and caught.value.timeout == 0.05
    assert str(caught.value) == "task t1 still RUNNING after 0.05s"
    assert seen[0] == ("QUEUED", None) and seen[-1] == ("RUNNING", {"percent": 40, "message": None})
    assert len(seen) == len(fake.requests)  # every read reported


def test_topology_without_an_amqp_url_says_it_uses_the_default_broker_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from taskplatform.errors import BrokerError
    from taskplatform.messaging.connection import BrokerConnection

    async def refused(self: BrokerConnection, *, wait: bool = True) -> None:
        raise BrokerError("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:5672/: refused")

    monkeypatch.setattr(BrokerConnection, "start", refused)  # whatever listens there: not reached
    monkeypatch.setenv("TASKPLATFORM_TOPOLOGY_PREFIX", "blue.")
    assert cli.main(["topology", "verify"]) == 3
    assert capsys.readouterr().err.splitlines() == [
        "note: TASKPLATFORM_AMQP_URL is not set: using the default broker amqp://guest:***@127.0.0.1:5672/ "
        "(vhost '/' on 127.0.0.1:5672, prefix 'blue.')",
        "error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:5672/: refused",
    ]
