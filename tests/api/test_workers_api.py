"""The worker registry API against the real app (JWT authentication, a real broker) on a memory
store: records written with ``beat_worker``, read back filtered, paged, judged online on the
store's clock; the operator role, bad labels and cursors, a store outage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.store.types import encode_cursor
from taskplatform.store.workers import encode_worker_cursor
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

URL = "/api/v1/workers"
OLGA = bearer(token("olga", "operator"))
ADA = bearer(token("ada", "admin"))
ALICE = bearer(token("alice"))


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The API with JWT authentication on a memory store, no reaper (no sweep changes a record
    behind the test's back); the client sends an operator's token."""
    settings = make_settings(auth="jwt", jwt_secret=SECRET, reaper_enabled=False)
    runtime = Runtime(settings, role="api", registry=registry, relay=False, store=MemoryTaskStore())
    async with served(runtime) as app, client_of(app, headers=OLGA) as client:
        yield client, runtime


def record(
    node_id: str,
    now: datetime,
    *,
    host: str = "h1",
    state: WorkerState = WorkerState.ONLINE,
    labels: dict[str, str] | None = None,
    running: int = 0,
    concurrency: int = 4,
    expires_in: float = 15.0,
) -> WorkerRecord:
    """A worker's record as it beat at ``now`` (the store's clock), present for ``expires_in`` s."""
    return WorkerRecord(
        node_id=node_id,
        host=host,
        pid=4242,
        labels=labels or {},
        task_types=["test_noop"],
        queue_groups=["default"],
        concurrency=concurrency,
        running=running,
        version="9.9.9",
        started_at=now - timedelta(minutes=5),
        last_seen_at=now,
        heartbeat_seconds=5.0,
        expires_at=now + timedelta(seconds=expires_in),
        state=state,
        state_changed_at=now - timedelta(minutes=5),
    )


async def beat(runtime: Runtime, *records: WorkerRecord) -> None:
    for r in records:
        await runtime.store.beat_worker(r)


async def ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    r = await client.get(URL, params=params)
    assert r.status_code == 200, (params, r.text)
    return [w["node_id"] for w in r.json()["items"]]


async def test_workers_are_listed_by_node_id_with_presence_and_load(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    now = runtime.store.now()
    await beat(
        runtime,
        record("w-c", now, state=WorkerState.STOPPED),
        record("w-a", now, running=1, concurrency=3, labels={"role": "db", "region": "eu"}),
        record("w-b", now, expires_in=-1),  # silent: its beats stopped, not yet swept
        record("w-d", now, state=WorkerState.STOPPING, running=2, concurrency=2),
        record("w-e", now, concurrency=0),
    )
    r = await client.get(URL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    items = {w["node_id"]: w for w in body["items"]}
    assert list(items) == ["w-a", "w-b", "w-c", "w-d", "w-e"]
    assert {n: (w["state"], w["online"]) for n, w in items.items()} == {
        "w-a": ("online", True),
        "w-b": ("online", False),
        "w-c": ("stopped", False),
        "w-d": ("stopping", True),
        "w-e": ("online", True),
    }
    assert [items[n]["load"] for n in ("w-a", "w-d", "w-e")] == [0.333, 1.0, 0.0]
    a = items["w-a"]
    assert a["labels"] == {"role": "db", "region": "eu"} and a["host"] == "h1" and a["pid"] == 4242
    assert a["running"] == 1 and a["concurrency"] == 3 and a["version"] == "9.9.9"
    assert a["task_types"] == ["test_noop"] and a["queue_groups"] == ["default"]
    assert datetime.fromisoformat(a["last_seen_at"]) == now
    assert datetime.fromisoformat(a["expires_at"]) == now + timedelta(seconds=15)

    one = await client.get(f"{URL}/w-a")
    assert one.status_code == 200, one.text
    assert one.json() == a
    assert (await client.get(f"{URL}/w-b")).json()["online"] is False


async def test_presence_is_judged_on_the_stores_clock(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    now = runtime.store.now()
    await beat(runtime, record("w-short", now, expires_in=60), record("w-long", now, expires_in=600))
    assert await ids(client, online="true") == ["w-long", "w-short"]
    # The store's clock runs 2 minutes ahead of this host's: w-short expired there.
    runtime.store.clock_offset += timedelta(minutes=2)
    r = await client.get(URL)
    assert {w["node_id"]: w["online"] for w in r.json()["items"]} == {"w-long": True, "w-short": False}
    assert (await client.get(f"{URL}/w-short")).json()["online"] is False
    assert await ids(client, online="true") == ["w-long"]
    assert await ids(client, online="false") == ["w-short"]


async def test_filters_by_presence_state_host_and_labels(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    now = runtime.store.now()
    await beat(
        runtime,
        record("w1", now, host="h1", labels={"role": "db", "region": "eu"}),
        record("w2", now, host="h2", labels={"role": "db", "region": "us"}),
        record("w3", now, host="h2", labels={"role": "web"}, state=WorkerState.STOPPED),
        record("w4", now, host="h1", expires_in=-5),
        record("w5", now, host="h3", state=WorkerState.OFFLINE, expires_in=-30),
    )
    assert await ids(client) == ["w1", "w2", "w3", "w4", "w5"]
    assert await ids(client, online="true") == ["w1", "w2"]
    assert await ids(client, online="false") == ["w3", "w4", "w5"]
    assert await ids(client, state="stopped") == ["w3"]
    assert await ids(client, state="online") == ["w1", "w2", "w4"]
    assert await ids(client, state="offline") == ["w5"]
    assert await ids(client, host="h2") == ["w2", "w3"]
    assert await ids(client, host="nowhere") == []
    assert await ids(client, label="role=db") == ["w1", "w2"]
    assert await ids(client, label=["role=db", "region=us"]) == ["w2"]
    assert await ids(client, label=["role=db", "region=asia"]) == []
    assert await ids(client, label="role=d") == []  # exact values, not prefixes
    assert await ids(client, host="h2", online="true", label="role=db") == ["w2"]
    assert await ids(client, host="h1", state="online", online="false") == ["w4"]


async def test_pages_follow_the_cursor_to_the_end_without_loss_or_repeat(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    now = runtime.store.now()
    names = [f"node-{i:02d}" for i in range(7)]
    await beat(runtime, *(record(n, now, host="h1") for n in reversed(names)))
    await beat(runtime, record("other", now, host="h9"))
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, "host": "h1", **({"cursor": cursor} if cursor else {})}
        r = await client.get(URL, params=params)
        assert r.status_code == 200, r.text
        pages.append([w["node_id"] for w in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, pages
    assert pages == [names[0:3], names[3:6], names[6:7]]


async def test_an_unknown_worker_is_a_404_with_the_error_body(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    await beat(runtime, record("w-known", runtime.store.now()))
    r = await client.get(f"{URL}/w-unknown")
    assert r.status_code == 404, r.text
    assert r.json() == {"error": {"code": "not_found", "message": "worker 'w-unknown' not found"}}
    assert (await client.get(f"{URL}/w-known")).status_code == 200


@pytest.mark.parametrize(
    ("labels", "named", "says"),
    [
        (["role"], "'role'", "has no '='"),
        (["role=db", "bad key=x"], "'bad key'", "label key"),
        (["role=d b"], "role='d b'", "the value is"),
        (["role=db", "role=web"], "'role'", "given twice"),
        (["role=db,region=eu"], "'role=db,region=eu'", "one key=value per label"),
        (["=db"], "''", "label key"),
    ],
)
async def test_a_bad_label_is_a_422_naming_it(
    api: tuple[httpx.AsyncClient, Runtime], labels: list[str], named: str, says: str
) -> None:
    client, runtime = api
    await beat(runtime, record("w1", runtime.store.now(), labels={"role": "db"}))
    r = await client.get(URL, params={"label": labels})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert named in error["message"] and says in error["message"], error
    assert error["details"][0]["loc"][:2] == ["query", "label"]


async def test_a_cursor_this_list_did_not_make_is_refused_as_bad_input(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    now = runtime.store.now()
    await beat(runtime, record("w1", now), record("w2", now))
    for bad in ("garbage!", encode_cursor(now, "w1"), "dw", encode_worker_cursor("a\x00b")):
        r = await client.get(URL, params={"cursor": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_cursor", (bad, r.text)
    # the same route takes its own cursor
    assert await ids(client, cursor=encode_worker_cursor("w1")) == ["w2"]


async def test_the_routes_need_an_operator_or_admin_token(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    await beat(runtime, record("w1", runtime.store.now()))
    for path in (URL, f"{URL}/w1", f"{URL}/unknown"):
        r = await client.get(path, headers=ALICE)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"] == {
            "code": "forbidden",
            "message": "this needs the operator or admin role; the token's roles: submitter",
        }
        r = await client.get(path, headers={"Authorization": ""})
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith('Bearer realm="taskplatform"')
    for who in (OLGA, ADA):
        assert (await client.get(URL, headers=who)).json()["items"][0]["node_id"] == "w1"
        assert (await client.get(f"{URL}/w1", headers=who)).status_code == 200


async def test_a_store_outage_is_a_503(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    await beat(runtime, record("w1", runtime.store.now()))
    store = runtime.store
    assert isinstance(store, MemoryTaskStore)
    store.available = False
    try:
        for path in (URL, f"{URL}/w1"):
            r = await client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "store_unavailable" and r.headers["retry-after"] == "5"
    finally:
        store.available = True
    assert (await client.get(f"{URL}/w1")).status_code == 200


async def test_the_routes_and_their_answers_are_in_the_openapi_document(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    spec = (await client.get("/openapi.json", headers={"Authorization": ""})).json()
    listing, one = spec["paths"][URL]["get"], spec["paths"][URL + "/{node_id}"]["get"]
    for operation, codes in (
        (listing, {"200", "401", "403", "422", "503"}),
        (one, {"200", "401", "403", "404", "422", "503"}),
    ):
        assert set(operation["responses"]) == codes, operation["responses"].keys()
        assert operation["security"] == [{"HTTPBearer": []}]
        for code in codes - {"200"}:
            schema = operation["responses"][code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, code
    assert {p["name"] for p in listing["parameters"]} == {
        "online",
        "state",
        "host",
        "label",
        "limit",
        "cursor",
    }
    view = spec["components"]["schemas"]["WorkerView"]["properties"]
    assert set(WorkerRecord.model_fields) | {"online", "load"} == set(view)
    assert [name for name, field in view.items() if not field.get("description")] == []


async def test_a_node_id_holding_a_slash_is_shown(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    await beat(runtime, record("k8s/pod-1", runtime.store.now()))
    got = await client.get(f"{URL}/k8s%2Fpod-1")
    assert got.status_code == 200 and got.json()["node_id"] == "k8s/pod-1"
    assert (await client.get(f"{URL}/k8s/pod-1")).json()["node_id"] == "k8s/pod-1"
