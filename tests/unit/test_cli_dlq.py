"""The DeadLetter client methods and ``taskplatform dlq``, against a fake API (httpx.MockTransport).

Every test checks what went over the wire (method, path, query, JSON body, the operator
headers) and what the command printed and returned.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from taskplatform import cli_dlq
from taskplatform.cli import main
from taskplatform.client import ApiError, AuditListing, DeadLetterListing, TaskPlatformClient
from taskplatform.models import DeadLetterStatus

BASE = "http://api.test"
TOKEN = "s3cret-token"
PREFIX = "/api/v1/dead-letters"


def dead_letter(record_id: str = "task-1", **overrides: Any) -> dict[str, Any]:
    """A dead letter as the API returns it."""
    record: dict[str, Any] = {
        "id": record_id,
        "task_id": record_id,
        "task_type": "summary",
        "user_id": "u1",
        "reason": "delivery_limit",
        "error_type": "ValueError",
        "status": "pending",
        "deaths": 2,
        "times_seen": 3,
        "first_seen_at": "2024-05-01T10:00:00Z",
        "last_seen_at": "2024-05-01T12:30:00Z",
        "body": '{"x": 1}',
    }
    record.update(overrides)
    return record


def audit_entry(entry_id: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "at": "2024-05-02T08:00:00Z",
        "actor": "alice",
        "action": "replay",
        "dead_letter_ids": ["task-1"],
        "outcome": "ok",
    }
    entry.update(overrides)
    return entry


def error_body(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


@dataclass
class FakeApi:
    """Answers (method, path) with a canned response and records every request it gets."""

    routes: dict[tuple[str, str], httpx.Response | Callable[[httpx.Request], httpx.Response]] = field(
        default_factory=dict
    )
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, response: httpx.Response | dict[str, Any]) -> None:
        self.routes[(method, path)] = (
            response if isinstance(response, httpx.Response) else httpx.Response(200, json=response)
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.raw_path.decode().split("?")[0]))
        if route is None:
            return error_body(404, "not_found", f"no fake route for {request.method} {request.url}")
        return route(request) if callable(route) else route

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def only(self) -> httpx.Request:
        """The one request made."""
        assert len(self.requests) == 1, [str(r.url) for r in self.requests]
        return self.requests[0]


def query(request: httpx.Request) -> dict[str, str]:
    items = request.url.params.multi_items()
    assert len(items) == len(dict(items)), f"repeated query parameters: {items}"
    return dict(items)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


def assert_operator(request: httpx.Request, operator: str = "alice", token: str = TOKEN) -> None:
    assert request.headers.get("authorization") == f"Bearer {token}"
    assert request.headers.get("x-operator") == operator


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


# ---------------------------------------------------------------- client
@pytest.fixture
def client(api: FakeApi) -> TaskPlatformClient:
    return TaskPlatformClient(BASE, operator_token=TOKEN, operator="alice", transport=api.transport)


async def test_client_list_sends_only_given_filters_and_parses_the_page(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.on(
        "GET",
        PREFIX,
        {
            "items": [dead_letter("a"), dead_letter("b", status="replayed")],
            "next_cursor": "c2",
            "counts": {"total": 7, "by_task_type": {"summary": 7}, "by_reason": {"delivery_limit": 7}},
        },
    )
    async with client:
        listing = await client.list_dead_letters(
            status=DeadLetterStatus.PENDING,
            task_type="summary",
            reason=None,
            since=datetime(2024, 5, 1, tzinfo=UTC),
            limit=20,
            cursor="c1",
        )

    request = api.only
    assert request.method == "GET"
    assert request.url.path == PREFIX
    assert query(request) == {
        "status": "pending",
        "task_type": "summary",
        "since": "2024-05-01T00:00:00+00:00",
        "limit": "20",
        "cursor": "c1",
    }
    assert_operator(request)
    assert isinstance(listing, DeadLetterListing)
    assert [d.id for d in listing.items] == ["a", "b"]
    assert listing.items[1].status is DeadLetterStatus.REPLAYED
    assert listing.next_cursor == "c2"
    assert listing.counts["total"] == 7


async def test_client_get_quotes_the_id_so_it_stays_one_path_segment(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.on("GET", f"{PREFIX}/msg%2Fodd%3Fid", dead_letter("msg/odd?id"))
    async with client:
        record = await client.get_dead_letter("msg/odd?id")
    assert api.only.url.raw_path.decode() == f"{PREFIX}/msg%2Fodd%3Fid"
    assert record.id == "msg/odd?id"
    assert record.deaths == 2


async def test_client_replay_one_sends_parameters_only_when_given(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    result = {"dead_letter": dead_letter(status="replayed"), "task_id": "task-1", "task_status": "QUEUED"}
    api.on("POST", f"{PREFIX}/task-1/replay", result)
    async with client:
        with_params = await client.replay_dead_letter("task-1", {"n": 3})
        without = await client.replay_dead_letter("task-1")

    first, second = api.requests
    assert body(first) == {"parameters": {"n": 3}}
    assert body(second) is None
    assert_operator(first)
    assert with_params == without == result


async def test_client_bulk_replay_body_omits_filters_not_given(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    result = {"dry_run": False, "matched": ["a"], "replayed": ["a"], "failed": {}, "seconds": 0.1}
    api.on("POST", f"{PREFIX}/replay", result)
    async with client:
        answer = await client.replay_dead_letters(error_type="ValueError", limit=10, rate=5.0)
    assert body(api.only) == {"error_type": "ValueError", "limit": 10, "dry_run": False, "rate": 5.0}
    assert_operator(api.only)
    assert answer == result


async def test_client_discard_and_audit(api: FakeApi, client: TaskPlatformClient) -> None:
    api.on("DELETE", f"{PREFIX}/task-1", dead_letter(status="discarded"))
    api.on("GET", f"{PREFIX}/audit", {"items": [audit_entry("e1", action="discard")], "next_cursor": "n"})
    async with client:
        discarded = await client.discard_dead_letter("task-1")
        audit = await client.dead_letter_audit(dead_letter_id="task-1", limit=5)

    delete, get = api.requests
    assert delete.method == "DELETE"
    assert discarded.status is DeadLetterStatus.DISCARDED
    assert query(get) == {"dead_letter_id": "task-1", "limit": "5"}
    assert isinstance(audit, AuditListing)
    assert [(e.id, e.action) for e in audit.items] == [("e1", "discard")]
    assert audit.next_cursor == "n"


async def test_client_sends_operator_headers_on_dead_letter_calls_only(api: FakeApi) -> None:
    api.on(
        "POST", "/api/v1/tasks/t1/cancel", {"task_id": "t1", "status": "CANCELLED", "cancel_requested": True}
    )
    async with TaskPlatformClient(BASE, operator_token=TOKEN, operator="alice", transport=api.transport) as c:
        await c.cancel("t1")
    assert "authorization" not in api.only.headers
    assert "x-operator" not in api.only.headers


async def test_client_api_error_body_raises_api_error(api: FakeApi, client: TaskPlatformClient) -> None:
    api.on("POST", f"{PREFIX}/task-1/replay", error_body(409, "conflict", "dead letter task-1 is replayed"))
    async with client:
        with pytest.raises(ApiError) as caught:
            await client.replay_dead_letter("task-1")
    assert caught.value.status == 409
    assert caught.value.code == "conflict"
    assert "dead letter task-1 is replayed" in str(caught.value)


# ---------------------------------------------------------------- CLI
@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main`` configures the root logger; give the next test the logging it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def dlq(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``taskplatform dlq ARGS...`` against the fake API, as OS user alice."""
    monkeypatch.setenv("TASKPLATFORM_API_URL", BASE)
    monkeypatch.setenv("TASKPLATFORM_OPERATOR_TOKEN", TOKEN)
    monkeypatch.setenv("TASKPLATFORM_EVENT_LOOP", "asyncio")
    monkeypatch.setattr(cli_dlq.getpass, "getuser", lambda: "alice")
    monkeypatch.setattr(
        cli_dlq, "open_client", functools.partial(cli_dlq.open_client, transport=api.transport)
    )

    def run(*args: str) -> int:
        return main(["dlq", *args])

    return run


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


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
    assert dlq("replay", "--all", "--yes") == 0
    assert body(api.only) == {"limit": 100, "dry_run": False}


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
    assert dlq("replay", "--all", "--error-type", "ValueError") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == {"b": "conflict"}
    assert "1 of 2 could not be replayed" in captured.err


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
        f"{PREFIX}/audit",
        {
            "items": [
                audit_entry(
                    "e2", action="bulk_replay", dry_run=True, dead_letter_ids=["a", "b", "c", "d", "e"]
                ),
                audit_entry("e1", actor="bob", action="discard", outcome="ok"),
            ],
            "next_cursor": None,
        },
    )
    assert dlq("audit", "--dead-letter-id", "task-1", "--limit", "10") == 0
    assert query(api.only) == {"dead_letter_id": "task-1", "limit": "10"}
    assert_operator(api.only)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "AT", "ACTOR", "ACTION", "OUTCOME", "DEAD", "LETTERS"]
    assert lines[1].split() == [
        "e2",
        "2024-05-02",
        "08:00:00Z",
        "alice",
        "bulk_replay",
        "(dry",
        "run)",
        "ok",
        "a,",
        "b,",
        "c",
        "+2",
    ]
    assert lines[2].split() == ["e1", "2024-05-02", "08:00:00Z", "bob", "discard", "ok", "task-1"]
    assert len(lines) == 3  # no next page


def test_dlq_api_error_prints_its_message_and_exits_1(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", f"{PREFIX}/nope", error_body(404, "not_found", "dead letter 'nope' not found"))
    assert dlq("show", "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err) == "error: HTTP 404 not_found: dead letter 'nope' not found"


def test_dlq_token_flag_overrides_the_environment(dlq: Callable[..., int], api: FakeApi) -> None:
    api.on("GET", PREFIX, LISTING)
    assert dlq("list", "--token", "other-token", "--json") == 0
    assert_operator(api.only, token="other-token")


def test_dlq_without_a_token_is_exit_2_and_no_request(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKPLATFORM_OPERATOR_TOKEN")
    assert dlq("list") == 2
    assert "no operator token: set TASKPLATFORM_OPERATOR_TOKEN or pass --token" in one_line(
        capsys.readouterr().err
    )
    assert api.requests == []
