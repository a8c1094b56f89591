"""The worker registry methods of TaskPlatformClient, against a fake API (httpx.MockTransport), and
the operator module's names as ``taskplatform.client`` exports them."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

import taskplatform.client as client_module
import taskplatform.client_operator as operator_module
from taskplatform.api.workers import WorkerView
from taskplatform.client import ApiError, TaskPlatformClient, WorkerInfo, WorkerListing
from taskplatform.models.worker import WorkerState
from tests.support.fake_api import BASE, TOKEN, WORKERS, FakeApi, error_body, worker_record


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> TaskPlatformClient:
    return TaskPlatformClient(BASE, token=TOKEN, transport=api.transport)


async def test_list_workers_sends_every_given_filter_and_parses_the_page(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.on(
        "GET",
        WORKERS,
        {
            "items": [worker_record("w-1"), worker_record("w-2", state="offline", online=False, load=0)],
            "next_cursor": "c2",
        },
    )
    async with client:
        listing = await client.list_workers(
            online=False,
            state=WorkerState.STOPPED,
            host="host-1",
            labels={"role": "db", "region": "eu"},
            limit=20,
            cursor="c1",
        )
    request = api.only
    assert request.method == "GET" and request.url.path == WORKERS
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.url.params.multi_items() == [
        ("state", "stopped"),
        ("host", "host-1"),
        ("cursor", "c1"),
        ("online", "false"),
        ("label", "role=db"),
        ("label", "region=eu"),
        ("limit", "20"),
    ]
    assert isinstance(listing, WorkerListing) and listing.next_cursor == "c2"
    first, second = listing.items
    assert isinstance(first, WorkerInfo)
    assert first.node_id == "w-1" and first.state is WorkerState.ONLINE and first.online is True
    assert first.load == 0.25 and first.running == 2 and first.concurrency == 8
    assert first.labels == {"role": "db", "region": "eu"}
    assert first.last_seen_at == datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)
    assert second.state is WorkerState.OFFLINE and second.online is False


async def test_list_workers_without_filters_sends_the_page_size_only(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.on("GET", WORKERS, {"items": [], "next_cursor": None})
    async with client:
        listing = await client.list_workers(online=True)
        assert listing.items == [] and listing.next_cursor is None
        await client.list_workers()
    first, second = api.requests
    assert first.url.params.multi_items() == [("online", "true"), ("limit", "50")]
    assert second.url.params.multi_items() == [("limit", "50")]


async def test_get_worker_quotes_the_node_id_and_parses_the_worker(
    api: FakeApi, client: TaskPlatformClient
) -> None:
    api.on("GET", f"{WORKERS}/odd%2Fnode%3Fx", worker_record("odd/node?x", extra_field="ignored"))
    async with client:
        worker = await client.get_worker("odd/node?x")
    assert api.only.url.raw_path == b"/api/v1/workers/odd%2Fnode%3Fx"
    assert worker.node_id == "odd/node?x" and worker.host == "host-1" and worker.version == "1.4.0"


async def test_an_unknown_worker_is_an_api_error_404(api: FakeApi, client: TaskPlatformClient) -> None:
    api.on("GET", f"{WORKERS}/gone", error_body(404, "not_found", "worker 'gone' not found"))
    api.on("GET", WORKERS, httpx.Response(403, json={"error": {"code": "forbidden", "message": "no"}}))
    async with client:
        with pytest.raises(ApiError) as missing:
            await client.get_worker("gone")
        with pytest.raises(ApiError) as denied:
            await client.list_workers()
    assert missing.value.status == 404 and missing.value.code == "not_found"
    assert "worker 'gone' not found" in str(missing.value)
    assert denied.value.status == 403


def test_the_clients_worker_model_has_the_fields_the_api_serves() -> None:
    assert list(WorkerInfo.model_fields) == list(WorkerView.model_fields)


def test_the_operator_module_names_are_exported_by_the_client_module() -> None:
    public = [
        name
        for name, value in vars(operator_module).items()
        if isinstance(value, type) and value.__module__ == operator_module.__name__
    ]
    assert {"DeadLetterListing", "AuditListing", "WorkerInfo", "WorkerListing"} <= set(public)
    for name in [*public, "DEAD_LETTERS", "WORKERS", "FilterValue"]:
        assert getattr(client_module, name) is getattr(operator_module, name), name
    for method in ("list_dead_letters", "dead_letter_audit", "list_workers", "get_worker"):
        assert callable(getattr(TaskPlatformClient, method)), method
