"""The DeadLetter methods of TaskPlatformClient, against a fake API (httpx.MockTransport)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskplatform.client import ApiError, AuditListing, DeadLetterListing, TaskPlatformClient
from taskplatform.models import DeadLetterStatus
from tests.support.fake_api import (
    BASE,
    PREFIX,
    TOKEN,
    FakeApi,
    assert_operator,
    audit_entry,
    body,
    dead_letter,
    error_body,
    query,
)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


# ---------------------------------------------------------------- client
@pytest.fixture
def client(api: FakeApi) -> TaskPlatformClient:
    return TaskPlatformClient(BASE, token=TOKEN, operator="alice", transport=api.transport)


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


async def test_client_sends_the_token_on_every_call_and_the_operator_on_dead_letter_calls_only(
    api: FakeApi,
) -> None:
    api.on(
        "POST", "/api/v1/tasks/t1/cancel", {"task_id": "t1", "status": "CANCELLED", "cancel_requested": True}
    )
    api.on("GET", PREFIX, {"items": [], "counts": {"total": 0}})
    async with TaskPlatformClient(BASE, token=TOKEN, operator="alice", transport=api.transport) as c:
        await c.cancel("t1")
        await c.list_dead_letters()
    cancel, dead_letters = api.requests
    assert cancel.headers.get("authorization") == f"Bearer {TOKEN}"
    assert "x-operator" not in cancel.headers
    assert_operator(dead_letters)


async def test_client_without_a_token_sends_no_authorization(api: FakeApi) -> None:
    api.on("GET", PREFIX, {"items": [], "counts": {"total": 0}})
    async with TaskPlatformClient(BASE, operator="alice", transport=api.transport) as c:
        await c.list_dead_letters()
    assert "authorization" not in api.only.headers
    assert api.only.headers.get("x-operator") == "alice"


async def test_client_from_settings_sends_the_configured_token(api: FakeApi) -> None:
    from taskplatform.settings import PlatformSettings

    api.on("GET", PREFIX, {"items": [], "counts": {"total": 0}})
    for token, sent in [("configured", "Bearer configured"), (None, None)]:
        settings = PlatformSettings(api_url=BASE, token=token)
        async with TaskPlatformClient.from_settings(settings, transport=api.transport) as client:
            await client.list_dead_letters()
        assert api.requests[-1].headers.get("authorization") == sent
        assert str(api.requests[-1].url).startswith(BASE)


async def test_client_api_error_body_raises_api_error(api: FakeApi, client: TaskPlatformClient) -> None:
    api.on("POST", f"{PREFIX}/task-1/replay", error_body(409, "conflict", "dead letter task-1 is replayed"))
    async with client:
        with pytest.raises(ApiError) as caught:
            await client.replay_dead_letter("task-1")
    assert caught.value.status == 409
    assert caught.value.code == "conflict"
    assert "dead letter task-1 is replayed" in str(caught.value)
