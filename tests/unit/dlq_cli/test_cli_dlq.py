"""``taskplatform dlq``, against a fake API (httpx.MockTransport): what went over the wire
(method, path, query, JSON body, the operator headers), what it printed and returned. The
fixtures are in ``conftest.py``; the bulk replay's progress is in ``test_cli_dlq_progress.py``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.support.fake_api import (
    PREFIX,
    FakeApi,
    assert_operator,
    audit_entry,
    body,
    dead_letter,
    error_body,
    one_line,
    query,
)

LISTING = {
    "items": [
        dead_letter("task-1"),
        dead_letter("msg-abc", task_id=None, task_type=None, error_type=None, reason="rejected", deaths=1),
    ],
    "next_cursor": "CURSOR2",
    "counts": {"total": 5, "by_task_type": {"summary": 4, "unknown": 1}, "by_reason": {"delivery_limit": 5}},
}


def test_dlq_list_sends_filters_and_prints_a_table_with_counts(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", PREFIX, LISTING)
    code = dlq(
        "list",
        "--status",
        "any",
        "--task-type",
        "summary",
        "--reason",
        "delivery_limit",
        "--user-id",
        "u1",
        "--error-type",
        "ValueError",
        "--since",
        "2024-05-01T00:00:00Z",
        "--until",
        "2024-05-02",
        "--limit",
        "2",
        "--cursor",
        "CURSOR1",
    )
    out = capsys.readouterr().out

    assert code == 0
    request = api.only
    assert (request.method, request.url.path) == ("GET", PREFIX)
    assert query(request) == {
        "status": "any",
        "task_type": "summary",
        "reason": "delivery_limit",
        "user_id": "u1",
        "error_type": "ValueError",
        "since": "2024-05-01T00:00:00+00:00",
        "until": "2024-05-02T00:00:00+00:00",  # no offset given: UTC
        "limit": "2",
        "cursor": "CURSOR1",
    }
    assert_operator(request)
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "TASK",
        "TYPE",
        "REASON",
        "ERROR",
        "TYPE",
        "STATUS",
        "DEATHS",
        "LAST",
        "SEEN",
    ]
    assert lines[1].split() == [
        "task-1",
        "summary",
        "delivery_limit",
        "ValueError",
        "pending",
        "2",
        "2024-05-01",
        "12:30:00Z",
    ]
    assert lines[2].split() == ["msg-abc", "-", "rejected", "-", "pending", "1", "2024-05-01", "12:30:00Z"]
    assert "5 dead letters match (showing 2)" in out
    assert "by task type: summary=4, unknown=1" in out
    assert "by reason:    delivery_limit=5" in out
    assert "next page: --cursor CURSOR2" in out


def test_dlq_list_defaults_to_pending_and_json_prints_the_api_page(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", PREFIX, LISTING)
    assert dlq("list", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert query(api.only) == {"status": "pending", "limit": "50"}
    assert [item["id"] for item in printed["items"]] == ["task-1", "msg-abc"]
    assert printed["items"][0]["error_type"] == "ValueError"
    assert printed["counts"] == LISTING["counts"]
    assert printed["next_cursor"] == "CURSOR2"


def test_dlq_list_bad_iso_date_is_one_line_exit_2_and_no_request(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dlq("list", "--since", "yesterday") == 2
    captured = capsys.readouterr()
    assert "--since is not an ISO 8601 date-time" in one_line(captured.err)
    assert "'yesterday'" in captured.err
    assert api.requests == []


def test_dlq_show_prints_the_record(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", f"{PREFIX}/task-1", dead_letter("task-1", body='{"secret": false}'))
    assert dlq("show", "task-1") == 0
    printed = json.loads(capsys.readouterr().out)
    assert api.only.method == "GET"
    assert_operator(api.only)
    assert printed["id"] == "task-1"
    assert printed["body"] == '{"secret": false}'
    assert printed["deaths"] == 2


def test_dlq_replay_one_with_params_sends_them(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    result = {"dead_letter": dead_letter(status="replayed"), "task_id": "task-1", "task_status": "QUEUED"}
    api.on("POST", f"{PREFIX}/task-1/replay", result)
    code = dlq("replay", "task-1", "--params", '{"text": "again", "n": 2}', "--operator", "bob")
    assert code == 0
    request = api.only
    assert (request.method, request.url.path) == ("POST", f"{PREFIX}/task-1/replay")
    assert body(request) == {"parameters": {"text": "again", "n": 2}}
    assert_operator(request, operator="bob")
    printed = json.loads(capsys.readouterr().out)
    assert (printed["task_id"], printed["task_status"]) == ("task-1", "QUEUED")


@pytest.mark.parametrize(
    ("params", "message"),
    [('{"text": ', "--params is not valid JSON"), ("[1, 2]", "--params must be a JSON object, got list")],
)
def test_dlq_replay_bad_params_is_one_line_exit_2_and_no_request(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str], params: str, message: str
) -> None:
    assert dlq("replay", "task-1", "--params", params) == 2
    assert message in one_line(capsys.readouterr().err)
    assert api.requests == []


def test_dlq_bulk_replay_sends_filters_limit_rate_and_dry_run(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    result = {"dry_run": True, "matched": ["a", "b"], "replayed": [], "failed": {}, "seconds": 0.0}
    api.on("POST", f"{PREFIX}/replay", result)
    code = dlq(
        "replay",
        "--all",
        "--task-type",
        "summary",
        "--reason",
        "rejected",
        "--since",
        "2024-05-01T00:00:00+02:00",
        "--limit",
        "5",
        "--rate",
        "2.5",
        "--dry-run",
    )
    assert code == 0
    assert body(api.only) == {
        "task_type": "summary",
        "reason": "rejected",
        "since": "2024-05-01T00:00:00+02:00",
        "limit": 5,
        "dry_run": True,
        "rate": 2.5,
    }
    assert_operator(api.only)
    assert json.loads(capsys.readouterr().out)["matched"] == ["a", "b"]


def test_dlq_bulk_replay_without_filters_is_refused_unless_yes(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dlq("replay", "--all") == 2
    assert "refusing to replay every pending dead letter" in one_line(capsys.readouterr().err)
    assert api.requests == []

    api.on(
        "POST",
        f"{PREFIX}/replay",
        {"dry_run": False, "matched": [], "replayed": [], "failed": {}, "seconds": 0},
    )
    api.on("GET", PREFIX, {"items": [], "counts": {"total": 0}})
    assert dlq("replay", "--all", "--yes") == 0
    count, replay = api.requests
    assert count.method == "GET" and set(query(count)) == {"status", "until", "limit"}
    assert body(replay) == {"limit": 100, "dry_run": False}


def test_dlq_bulk_replay_with_failures_exits_1(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    result = {
        "dry_run": False,
        "matched": ["a", "b"],
        "replayed": ["a"],
        "failed": {"b": "conflict"},
        "seconds": 1,
    }
    api.on("POST", f"{PREFIX}/replay", result)
    api.on("GET", PREFIX, {"items": [dead_letter("a")], "counts": {"total": 2}})
    assert dlq("replay", "--all", "--error-type", "ValueError") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == {"b": "conflict"}
    assert captured.err.splitlines() == [
        "replaying 2 of 2 pending dead letter(s) matching the filters",
        "replayed 1, failed 1 of 2 matched in 1s",
        "1 of 2 could not be replayed",
    ]
    count = query(api.requests[0])
    assert (count.pop("status"), count.pop("error_type"), count.pop("limit")) == (
        "pending",
        "ValueError",
        "1",
    )
    assert set(count) == {"until"}  # last seen before the replay started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("task-1", "--all"), "give a dead letter ID or --all, not both"),
        ((), "give the ID of the dead letter to replay, or --all"),
        (("task-1", "--task-type", "x", "--dry-run"), "--task-type, --dry-run only apply to a bulk replay"),
        (("--all", "--reason", "r", "--params", "{}"), "--params applies to replaying one dead letter"),
    ],
)
def test_dlq_replay_needs_exactly_one_of_id_or_all(
    dlq: Callable[..., int],
    api: FakeApi,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    assert dlq("replay", *args) == 2
    assert message in one_line(capsys.readouterr().err)
    assert api.requests == []


def test_dlq_discard_deletes_and_prints_the_record(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("DELETE", f"{PREFIX}/task-1", dead_letter(status="discarded", discarded_at="2024-05-03T00:00:00Z"))
    assert dlq("discard", "task-1") == 0
    assert (api.only.method, api.only.url.path) == ("DELETE", f"{PREFIX}/task-1")
    assert_operator(api.only)
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "discarded"


def test_dlq_audit_sends_the_filter_and_prints_entries(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on(
        "GET",
        "/api/v1/audit",
        {
            "items": [
                audit_entry(
                    "e2", action="bulk_replay", dry_run=True, dead_letter_ids=["a", "b", "c", "d", "e"]
                ),
                audit_entry("e1", actor="bob", action="discard", outcome="ok", task_ids=["task-1"]),
            ],
            "next_cursor": None,
        },
    )
    assert dlq("audit", "--dead-letter-id", "task-1", "--limit", "10") == 0
    assert query(api.only) == {"dead_letter_id": "task-1", "limit": "10"}
    assert_operator(api.only)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "AT", "ACTOR", "ACTION", "OUTCOME", "TASKS", "DEAD", "LETTERS"]
    assert lines[1].split() == [
        "e2",
        "2024-05-02",
        "08:00:00Z",
        "alice",
        "bulk_replay",
        "(dry",
        "run)",
        "ok",
        "-",
        "a,",
        "b,",
        "c",
        "+2",
    ]
    assert lines[2].split() == ["e1", "2024-05-02", "08:00:00Z", "bob", "discard", "ok", "task-1", "task-1"]
    assert len(lines) == 3  # no next page


def test_dlq_audit_sends_every_filter_of_the_whole_log(dlq: Callable[..., int], api: FakeApi) -> None:
    api.on("GET", "/api/v1/audit", {"items": [], "next_cursor": None})
    argv = [
        "--task-id",
        "t-9",
        "--actor",
        "ops",
        "--action",
        "cancel",
        "--since",
        "2026-12-01",
        "--until",
        "2026-12-02T00:00:00+01:00",
    ]
    assert dlq("audit", *argv) == 0
    assert query(api.only) == {
        "task_id": "t-9",
        "actor": "ops",
        "action": "cancel",
        "since": "2026-12-01T00:00:00+00:00",
        "until": "2026-12-02T00:00:00+01:00",
        "limit": "50",
    }


def test_dlq_api_error_prints_its_message_and_exits_5_for_not_found(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", f"{PREFIX}/nope", error_body(404, "not_found", "dead letter 'nope' not found"))
    assert dlq("show", "nope") == 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err) == "error: HTTP 404 not_found: dead letter 'nope' not found"


def test_dlq_token_flag_overrides_the_environment(dlq: Callable[..., int], api: FakeApi) -> None:
    api.on("GET", PREFIX, LISTING)
    assert dlq("list", "--token", "other-token", "--json") == 0
    assert_operator(api.only, token="other-token")


def test_dlq_without_a_token_sends_no_authorization(
    dlq: Callable[..., int], api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKPLATFORM_TOKEN")  # an API without authentication needs none
    api.on("GET", PREFIX, LISTING)
    assert dlq("list", "--json") == 0
    assert "authorization" not in api.only.headers
    assert api.only.headers.get("x-operator") == "alice"


# ---------------------------------------------------------------- unpark (RabbitMQ, not the API)
def test_unpark_refuses_a_limit_below_one(
    dlq: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        dlq("unpark", "--limit", "0")
    assert exited.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_unpark_without_a_broker_says_so_and_fails(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLATFORM_AMQP_URL", "amqp://guest:s3cret@127.0.0.1:1/")  # nothing listens
    assert dlq("unpark") == 3
    err = one_line(capsys.readouterr().err)  # aiormq's own log of the refused connection is quiet
    assert err.startswith(
        "error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/ (TASKPLATFORM_AMQP_URL): "
        "AMQPConnectionError"
    )
    assert "s3cret" not in err
    assert api.requests == []  # it never talks to the API
