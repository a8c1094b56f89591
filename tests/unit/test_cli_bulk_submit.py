"""``taskplatform submit --file tasks.jsonl`` against a fake API: one task per line through the
bulk route, 1,000 per request; bad lines named by number and nothing sent; one JSON line per
task on stdout and a summary on stderr; a refused request names its items by line."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskplatform.cli import commands as cli
from taskplatform.cli.output import ExitCode
from tests.support.fake_api import FakeApi, api_for_cli, body, cli_environment, one_line
from tests.unit.test_client_bulk import bulk_route

BULK = "/api/v1/tasks/bulk"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with cli_environment(monkeypatch):
        yield


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """The commands' client talks to a fake API."""
    return api_for_cli(monkeypatch)


def noop(i: int, **extra: Any) -> dict[str, Any]:
    return {"task_type": "test_noop", "parameters": {"value": i}, **extra}


def write(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def printed(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_each_line_is_a_task_and_each_gets_a_line_of_output(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    lines = [
        json.dumps(noop(0)),
        "",
        "   ",
        json.dumps(noop(1, idempotency_key="k", priority=3)),
        json.dumps(noop(2)),
    ]
    assert cli.main(["submit", "--file", write(tmp_path, lines), "--token", "tkn"]) == 0
    captured = capsys.readouterr()
    assert printed(captured.out) == [
        {"line": 1, "task_id": "t0", "status": "QUEUED", "outcome": "created"},
        {"line": 4, "task_id": "t1", "status": "QUEUED", "outcome": "created"},
        {"line": 5, "task_id": "t2", "status": "QUEUED", "outcome": "created"},
    ]
    assert one_line(captured.err) == (
        f"submitted 3 task(s) from {tmp_path / 'tasks.jsonl'} in 1 request(s): 3 created, 0 existing"
    )
    assert body(api.only)["tasks"] == [noop(0), noop(1, idempotency_key="k", priority=3), noop(2)]
    assert api.only.headers["authorization"] == "Bearer tkn"


def test_dash_reads_stdin_and_the_summary_counts_each_outcome(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def mixed(request: httpx.Request) -> httpx.Response:
        outcomes = ["existing", "stored_unpublished", "stored_unpublished"]
        results = [
            {"index": i, "task_id": f"t{i}", "status": "QUEUED", "outcome": outcome}
            for i, outcome in enumerate(outcomes)
        ]
        return httpx.Response(202, json={"results": results})

    api.routes[("POST", BULK)] = mixed
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(noop(i)) for i in range(3))))
    assert cli.main(["submit", "--file", "-"]) == 0
    captured = capsys.readouterr()
    assert [x["outcome"] for x in printed(captured.out)] == [
        "existing",
        "stored_unpublished",
        "stored_unpublished",
    ]
    assert one_line(captured.err) == (
        "submitted 3 task(s) from stdin in 1 request(s): 0 created, 1 existing, 2 stored_unpublished "
        "(published when the broker returns)"
    )


def test_a_long_file_goes_in_requests_of_a_thousand_with_progress(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    path = write(tmp_path, [json.dumps(noop(i)) for i in range(2500)])
    assert cli.main(["submit", "--file", path]) == 0
    captured = capsys.readouterr()
    assert [len(body(r)["tasks"]) for r in api.requests] == [1000, 1000, 500]
    out = printed(captured.out)
    assert len(out) == 2500 and out[-1] == {
        "line": 2500,
        "task_id": "t2499",
        "status": "QUEUED",
        "outcome": "created",
    }
    err = captured.err.splitlines()
    assert err[-1] == f"submitted 2500 task(s) from {path} in 3 request(s): 2500 created, 0 existing"
    assert "submitted: 2000/2500" in err and "\x1b" not in captured.err  # plain progress off a terminal


def test_bad_lines_are_named_by_number_and_nothing_is_sent(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        json.dumps(noop(0)),
        '{"task_type": "test_noop", ',
        "[1, 2]",
        json.dumps(noop(3, colour="red")),
        json.dumps({"parameters": {}}),
        json.dumps({"task_type": 5}),
        json.dumps(noop(6)),
    ]
    assert cli.main(["submit", "--file", write(tmp_path, lines)]) == ExitCode.BAD_INPUT
    message = one_line(capsys.readouterr().err)
    assert message.startswith("error: 5 bad line(s), nothing was sent: line 2: not valid JSON: ")
    assert (
        "; line 3: must be a JSON object, got list; line 4: unknown field(s) 'colour'; a line may have "
        in message
    )
    assert "; line 5: task_type (a registered task type's name) is missing; line 6: task_type" in message
    assert "line 1:" not in message and "line 7" not in message
    assert api.requests == []


def test_many_bad_lines_are_counted_beyond_the_first_ten(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["submit", "--file", write(tmp_path, ["x"] * 14)]) == ExitCode.BAD_INPUT
    message = one_line(capsys.readouterr().err)
    assert (
        "line 10: not valid JSON" in message
        and "line 11:" not in message
        and message.endswith("; and 4 more")
    )
    assert api.requests == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit"], "error: give a task type, or --file with one task per line"),
        (["submit", "test_noop", "--file", "f"], "error: TASK_TYPE cannot go with --file"),
        (
            [
                "submit",
                "--file",
                "f",
                "--params",
                "{}",
                "--user-id",
                "u",
                "--priority",
                "0",
                "--tag",
                "a",
                "--wait",
            ],
            "error: --params, --user-id, --priority, --tag, --wait cannot go with --file: each line names",
        ),
        (
            ["submit", "--file", "/no/such/tasks.jsonl"],
            "error: cannot read --file /no/such/tasks.jsonl: [Errno 2]",
        ),
    ],
)
def test_wrong_command_lines_exit_2_and_send_nothing(
    api: FakeApi, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == ExitCode.BAD_INPUT
    assert one_line(capsys.readouterr().err).startswith(message)
    assert api.requests == []


def test_a_file_without_tasks_or_not_text_is_refused(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["submit", "--file", write(tmp_path, ["", "  "])]) == ExitCode.BAD_INPUT
    assert (
        one_line(capsys.readouterr().err)
        == f"error: no tasks in {tmp_path / 'tasks.jsonl'}: give one JSON object per line"
    )
    binary = tmp_path / "tasks.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    assert cli.main(["submit", "--file", str(binary)]) == ExitCode.BAD_INPUT
    assert "cannot read --file" in one_line(capsys.readouterr().err)
    assert api.requests == []


def refusing(
    status: int, code: str, details: list[Any], on_call: int = 1
) -> Callable[[httpx.Request], httpx.Response]:
    def refuse(call: int, items: list[dict[str, Any]]) -> httpx.Response | None:
        if call != on_call:
            return None
        error = {
            "code": code,
            "message": f"{len(details)} of the submitted tasks are invalid",
            "details": details,
        }
        return httpx.Response(status, json={"error": error})

    return bulk_route(refuse=refuse)


def test_a_refused_request_names_its_items_by_line_and_says_nothing_was_stored(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    details = [
        {"index": 1, "code": "unknown_task_type", "msg": "unknown task type 'nope'"},
        {"index": 1, "code": "x"},  # no msg: not named
        {"index": 99, "msg": "not one of ours"},
    ]
    api.routes[("POST", BULK)] = refusing(422, "validation_error", details)
    lines = [json.dumps(noop(0)), "", json.dumps({"task_type": "nope"})]
    assert cli.main(["submit", "--file", write(tmp_path, lines)]) == ExitCode.BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err) == (
        "error: HTTP 422 validation_error: line 3: unknown task type 'nope'; nothing was stored"
    )


def test_a_refusal_without_items_is_the_apis_message(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.routes[("POST", BULK)] = refusing(429, "too_many_requests", [])
    assert cli.main(["submit", "--file", write(tmp_path, [json.dumps(noop(0))])]) == ExitCode.UNAVAILABLE
    assert one_line(capsys.readouterr().err) == (
        "error: HTTP 429 too_many_requests: 0 of the submitted tasks are invalid; nothing was stored"
    )
    forbidden = [{"index": i, "loc": ["tasks", i, "user_id"]} for i in range(12)]
    api.routes[("POST", BULK)] = refusing(403, "forbidden", forbidden)
    lines = [json.dumps(noop(0, user_id="b"))] * 12
    assert cli.main(["submit", "--file", write(tmp_path, lines)]) == ExitCode.DENIED
    assert one_line(capsys.readouterr().err) == (
        "error: HTTP 403 forbidden: 12 of the submitted tasks are invalid "
        "(line(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …); nothing was stored"
    )


def test_a_later_request_refused_prints_what_was_stored_and_names_the_line(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    details = [{"index": 4, "code": "invalid_parameters", "msg": "parameters.value: bad"}]
    api.routes[("POST", BULK)] = refusing(422, "invalid_parameters", details, on_call=2)
    lines = ["", *(json.dumps(noop(i)) for i in range(1500))]  # task i on line i + 2
    path = write(tmp_path, lines)
    assert cli.main(["submit", "--file", path]) == ExitCode.BAD_INPUT
    captured = capsys.readouterr()
    out = printed(captured.out)
    assert len(out) == 1000 and out[0]["line"] == 2 and out[-1]["line"] == 1001
    assert captured.err.splitlines()[-1] == (
        "error: HTTP 422 invalid_parameters: line 1006: parameters.value: bad; the tasks of lines 2 to 1001 "
        f"of {path} were stored (printed above), the rest were not: fix the file and submit it again (with "
        "idempotency keys, what was stored comes back as existing)"
    )


def _times_out_on(call: int) -> Callable[[httpx.Request], httpx.Response]:
    """The bulk route, except that request ``call`` gets no answer (a read time-out)."""
    route = bulk_route()
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == call:
            raise httpx.ReadTimeout("timed out (test)", request=request)
        return route(request)

    return handle


def test_a_later_request_without_an_answer_prints_what_was_stored_and_says_the_rest_is_unknown(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.routes[("POST", BULK)] = _times_out_on(2)
    path = write(tmp_path, [json.dumps(noop(i)) for i in range(1500)])
    assert cli.main(["submit", "--file", path]) == ExitCode.UNAVAILABLE
    captured = capsys.readouterr()
    assert len(printed(captured.out)) == 1000
    last = captured.err.splitlines()[-1]
    assert "HTTP 0 no_answer: no answer to the request from task 1000 on (ReadTimeout" in last
    assert last.endswith(
        f"the tasks of lines 1 to 1000 of {path} were stored (printed above), whether the rest were is "
        "unknown: submit the file again with idempotency keys to be sure"
    )


def test_a_first_request_without_an_answer_does_not_say_nothing_was_stored(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.routes[("POST", BULK)] = _times_out_on(1)
    path = write(tmp_path, [json.dumps(noop(i)) for i in range(3)])
    assert cli.main(["submit", "--file", path]) == ExitCode.UNAVAILABLE
    last = capsys.readouterr().err.splitlines()[-1]
    assert "may or may not have been stored" in last and "nothing was stored" not in last


def test_chunk_size_sets_the_tasks_per_request(api: FakeApi, tmp_path: Path) -> None:
    api.routes[("POST", BULK)] = bulk_route()
    path = write(tmp_path, [json.dumps(noop(i)) for i in range(700)])
    assert cli.main(["submit", "--file", path, "--chunk-size", "300"]) == 0
    assert [len(body(r)["tasks"]) for r in api.requests] == [300, 300, 100]


@pytest.mark.parametrize("value", ["0", "1001", "ten"])
def test_a_bad_chunk_size_exits_2_and_sends_nothing(
    value: str, api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, [json.dumps(noop(1))])
    with pytest.raises(SystemExit) as exited:
        cli.main(["submit", "--file", path, "--chunk-size", value])
    assert exited.value.code == 2 and api.requests == []
    assert "--chunk-size" in capsys.readouterr().err


def test_chunk_size_without_a_file_is_refused(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "test_noop", "--chunk-size", "10"]) == ExitCode.BAD_INPUT
    assert "--chunk-size goes with --file" in capsys.readouterr().err and api.requests == []


def test_submit_aims_a_task_with_target(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("POST", "/api/v1/tasks", httpx.Response(201, json={"task_id": "t-1", "status": "QUEUED"}))
    target = '{"labels": {"role": "db"}, "mode": "each", "target_timeout": 30}'
    assert cli.main(["submit", "test_noop", "--params", '{"value": 1}', "--target", target]) == 0
    assert body(api.only)["target"] == {"labels": {"role": "db"}, "mode": "each", "target_timeout": 30.0}
    assert printed(capsys.readouterr().out) == [{"task_id": "t-1"}]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            '{"node": "a", "labels": {"role": "db"}}',
            "--target is not a valid target: target: Value error, name either",
        ),
        ('{"node": "a", "mode": "each"}', "mode 'each' needs labels"),
        ('{"node": 5}', "--target is not a valid target: node: Input should be a valid string"),
        ("[1]", "--target must be a JSON object, got list"),
        ("{", "--target is not valid JSON"),
    ],
)
def test_a_bad_target_exits_2_naming_it_and_sends_nothing(
    api: FakeApi, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    assert cli.main(["submit", "test_noop", "--target", target]) == ExitCode.BAD_INPUT
    assert message in one_line(capsys.readouterr().err)
    assert api.requests == []


def test_a_target_the_api_refuses_exits_with_its_message(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = {"error": {"code": "target_unreachable", "message": "no worker node 'x' has registered"}}
    api.on("POST", "/api/v1/tasks", httpx.Response(422, json=refusal))
    assert cli.main(["submit", "test_noop", "--target", '{"node": "x"}']) == ExitCode.BAD_INPUT
    assert "no worker node 'x' has registered" in capsys.readouterr().err


def test_target_cannot_go_with_file_but_a_line_may_carry_one(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, [json.dumps(noop(1, target={"node": "db-1"}))])
    assert cli.main(["submit", "--file", path, "--target", '{"node": "a"}']) == ExitCode.BAD_INPUT
    assert "--target cannot go with --file" in one_line(capsys.readouterr().err)
    api.routes[("POST", BULK)] = bulk_route()
    assert cli.main(["submit", "--file", path]) == 0
    assert body(api.only)["tasks"][0]["target"] == {"node": "db-1"}
