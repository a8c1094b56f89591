"""``taskplatform workers`` (and ``workers show``) against a fake API: the options as query
parameters, the pages followed up to ``--limit``, the table and the JSON, the exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from taskplatform.cli import main
from taskplatform.cli import workers as cli_workers
from taskplatform.cli.output import ExitCode
from taskplatform.store.types import MAX_PAGE_SIZE
from tests.support.fake_api import (
    TOKEN,
    WORKERS,
    FakeApi,
    api_for_cli,
    cli_environment,
    error_body,
    worker_record,
)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with cli_environment(monkeypatch):
        monkeypatch.setenv("TASKPLATFORM_TOKEN", TOKEN)
        yield


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    return api_for_cli(monkeypatch)


def params(request: httpx.Request) -> list[tuple[str, str]]:
    return request.url.params.multi_items()


def paged(
    total: int, names: Callable[[int], str] = lambda i: f"w-{i:04d}"
) -> Callable[[httpx.Request], httpx.Response]:
    """An API holding ``total`` workers, answering ``limit`` of them after ``cursor`` (an index)."""

    def handle(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        end = min(total, start + int(request.url.params["limit"]))
        items = [worker_record(names(i)) for i in range(start, end)]
        return httpx.Response(200, json={"items": items, "next_cursor": str(end) if end < total else None})

    return handle


TWO = {
    "items": [
        worker_record("host-1-4242-abc123"),
        worker_record(
            "host-2-77-def456",
            host="host-2",
            labels={},
            state="offline",
            online=False,
            running=0,
            concurrency=4,
            last_seen_at="2024-05-01T11:00:00+00:00",
            version="1.3.9",
        ),
    ],
    "next_cursor": None,
}


def test_workers_prints_a_table_of_every_worker(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", WORKERS, TWO)
    assert main(["workers"]) == 0
    assert params(api.only) == [("limit", "200")]
    assert api.only.headers["authorization"] == f"Bearer {TOKEN}"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NODE",
        "ID",
        "HOST",
        "STATE",
        "ONLINE",
        "RUNNING",
        "LABELS",
        "LAST",
        "SEEN",
        "VERSION",
    ]
    assert lines[1].split() == [
        "host-1-4242-abc123",
        "host-1",
        "online",
        "yes",
        "2/8",
        "region=eu,role=db",
        "2024-05-01",
        "12:30:05Z",
        "1.4.0",
    ]
    assert lines[2].split() == [
        "host-2-77-def456",
        "host-2",
        "offline",
        "no",
        "0/4",
        "-",
        "2024-05-01",
        "11:00:00Z",
        "1.3.9",
    ]
    assert lines[3] == "2 worker(s), 1 online"
    assert len(lines) == 4
    # the columns line up: every row's host starts where the header's does
    at = lines[0].index("HOST")
    assert lines[1][at:].startswith("host-1 ") and lines[2][at:].startswith("host-2 ")


def test_no_workers_says_so(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", WORKERS, {"items": [], "next_cursor": None})
    assert main(["workers", "--online"]) == 0
    assert capsys.readouterr().out == "no workers match\n"


@pytest.mark.parametrize(
    ("options", "sent"),
    [
        (["--online"], [("online", "true")]),
        (["--offline"], [("online", "false")]),
        (["--state", "stopping"], [("state", "stopping")]),
        (["--host", "db-7"], [("host", "db-7")]),
        (["--label", "role=db", "--label", "region=eu"], [("label", "role=db"), ("label", "region=eu")]),
        (
            ["--offline", "--state", "offline", "--host", "h", "--label", "a.b/c=x_y"],
            [("state", "offline"), ("host", "h"), ("online", "false"), ("label", "a.b/c=x_y")],
        ),
    ],
)
def test_options_are_sent_as_query_parameters(
    api: FakeApi, options: list[str], sent: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", WORKERS, TWO)
    assert main(["workers", *options, "--limit", "5"]) == 0
    assert params(api.only) == [*sent, ("limit", "5")]
    assert "2 worker(s)" in capsys.readouterr().out


def test_pages_are_followed_up_to_the_limit(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", WORKERS)] = paged(1500)
    assert main(["workers", "--limit", "1200", "--host", "h"]) == 0
    assert [params(r) for r in api.requests] == [
        [("host", "h"), ("limit", "500")],
        [("host", "h"), ("cursor", "500"), ("limit", "500")],
        [("host", "h"), ("cursor", "1000"), ("limit", "200")],
    ]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 1200 + 1
    assert lines[1].startswith("w-0000 ") and lines[1200].startswith("w-1199 ")
    assert lines[-1] == "1200 worker(s), 1200 online; more match (--limit shows more)"


def test_pages_are_followed_to_the_end_and_json_is_one_listing(
    api: FakeApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api.routes[("GET", WORKERS)] = paged(7)
    monkeypatch.setattr(cli_workers, "PAGE_SIZE", 3)
    assert main(["workers", "--json"]) == 0
    assert [params(r) for r in api.requests] == [
        [("limit", "3")],
        [("cursor", "3"), ("limit", "3")],
        [("cursor", "6"), ("limit", "3")],
    ]
    listing = json.loads(capsys.readouterr().out)
    assert [w["node_id"] for w in listing["items"]] == [f"w-{i:04d}" for i in range(7)]
    assert listing["next_cursor"] is None
    assert listing["items"][0] == worker_record("w-0000")


def test_an_api_that_does_not_move_on_is_not_followed_for_ever(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", WORKERS, {"items": [], "next_cursor": "same"})
    assert main(["workers"]) == 0
    assert len(api.requests) == 1
    assert capsys.readouterr().out == "no workers match\n"


def test_the_page_size_is_the_apis_largest() -> None:
    assert cli_workers.PAGE_SIZE == MAX_PAGE_SIZE


def test_show_prints_one_worker_as_json(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", f"{WORKERS}/host-1-4242-abc123", worker_record())
    assert main(["workers", "--token", "other", "show", "host-1-4242-abc123"]) == 0
    assert api.only.headers["authorization"] == "Bearer other"  # a parent option stays given
    shown = json.loads(capsys.readouterr().out)
    assert shown["node_id"] == "host-1-4242-abc123" and shown["online"] is True and shown["load"] == 0.25
    assert main(["workers", "show", "host-1-4242-abc123", "--token", "mine"]) == 0
    assert api.requests[-1].headers["authorization"] == "Bearer mine"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--label", "role"], "has no '='"),
        (["--label", "role=db,region=eu"], "one key=value per --label"),
        (["--label", "role=db", "--label", "role=web"], "'role' is given twice"),
        (["--label", "role=d b"], "the value is"),
        (["--online", "show", "x"], "--online/--offline filter the list"),
        (["--limit", "3", "--host", "h", "show", "x"], "--host, --limit filter the list"),
    ],
)
def test_bad_options_exit_2_before_any_request(
    api: FakeApi, options: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workers", *options]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err, err
    assert api.requests == []


def test_the_online_and_offline_options_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["workers", "--online", "--offline"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("answer", "code", "says"),
    [
        (
            error_body(404, "not_found", "worker 'nope' not found"),
            ExitCode.NOT_FOUND,
            "worker 'nope' not found",
        ),
        (error_body(403, "forbidden", "this needs the operator or admin role"), ExitCode.DENIED, "operator"),
        (
            error_body(503, "store_unavailable", "the task store is unavailable"),
            ExitCode.UNAVAILABLE,
            "store",
        ),
    ],
)
def test_api_refusals_exit_with_their_code(
    api: FakeApi, answer: httpx.Response, code: ExitCode, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", f"{WORKERS}/nope", answer)
    api.on("GET", WORKERS, answer)
    for argv in (["workers", "show", "nope"], ["workers"]):
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("error: HTTP ") and says in err, err


def test_labels_are_checked_like_the_api_checks_them() -> None:
    assert cli_workers.parse_label_options(["role=db", " region = eu "]) == {"role": "db", "region": "eu"}
    assert cli_workers.parse_label_options(None) == {}
    with pytest.raises(cli_workers.CommandError, match="label key") as refused:
        cli_workers.parse_label_options(["x" * 64 + "=1"])
    assert refused.value.code is ExitCode.BAD_INPUT
