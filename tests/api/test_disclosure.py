"""What a caller learns beyond what it may see: tracebacks, operations endpoints, timing of 404s."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.store.helpers import make_task
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

ALICE = bearer(token("alice"))
BOB = bearer(token("bob"))
OLGA = bearer(token("olga", "operator"))
ADA = bearer(token("ada", "admin"))
TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/app/executors/secret.py", line 42, in run\n'

Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Runtime]]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> Serve:
    """``async with serve(**settings) as (client, runtime)``: the API with HS256 JWTs, no worker."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        values: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET, **overrides}
        runtime = Runtime(make_settings(**values), role="api", registry=registry, relay=False)
        async with served(runtime) as app, client_of(app) as client:
            yield client, runtime

    return run


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with serve() as running:
        yield running


def failed_task(**overrides: Any) -> BackgroundTask:
    error = ErrorInfo(
        type="ValueError", message="bad input", traceback=TRACEBACK, attempt=2, node_id="worker-host-7"
    )
    fields: dict[str, Any] = {"task_type": "test_noop", "parameters": {}, "status": TaskStatus.FAILED}
    return make_task(**{**fields, "error_info": error, **overrides})


# ---------------------------------------------------------------- tracebacks
async def test_a_submitter_reads_its_tasks_error_without_traceback_or_node(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    parent = failed_task(user_id="alice")
    child = failed_task(user_id="alice", parent_task_id=parent.id)
    await runtime.store.create_many([parent, child])

    children = await client.get(f"/api/v1/tasks/{parent.id}/children", headers=ALICE)
    reads = {
        "get": (await client.get(f"/api/v1/tasks/{parent.id}", headers=ALICE)).json(),
        "list": (await client.get("/api/v1/tasks", headers=ALICE)).json()["items"][0],
        "children": children.json()["items"][0],
    }
    for how, body in reads.items():
        error = body["error_info"]
        assert error["type"] == "ValueError" and error["message"] == "bad input", how
        assert error["traceback"] is None and error["node_id"] is None, how
        assert "/srv/app" not in json.dumps(body) and "worker-host-7" not in json.dumps(body), how


async def test_operators_and_admins_keep_the_traceback(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    parent = failed_task(user_id="alice")
    child = failed_task(user_id="alice", parent_task_id=parent.id)
    await runtime.store.create_many([parent, child])
    for who in (OLGA, ADA):
        got = (await client.get(f"/api/v1/tasks/{parent.id}", headers=who)).json()
        listed = (await client.get("/api/v1/tasks", headers=who)).json()["items"]
        children = (await client.get(f"/api/v1/tasks/{parent.id}/children", headers=who)).json()["items"]
        for body in (got, *listed, *children):
            assert body["error_info"]["traceback"] == TRACEBACK
            assert body["error_info"]["node_id"] == "worker-host-7"


# ---------------------------------------------------------------- operations endpoints
async def test_readyz_and_metrics_are_public_by_default(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_protected_readyz_and_metrics_need_an_operator_token(serve: Serve) -> None:
    async with serve(protect_ops_endpoints=True) as (client, _):
        for path in ("/readyz", "/metrics"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 401, path
            assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="taskplatform"'
            assert "queues" not in anonymous.json() and "taskplatform_" not in anonymous.text, path
            assert (await client.get(path, headers=bearer("not-a-token"))).status_code == 401, path
            assert (await client.get(path, headers=ALICE)).status_code == 403, path
            for who in (OLGA, ADA):
                assert (await client.get(path, headers=who)).status_code == 200, path
        ready = (await client.get("/readyz", headers=OLGA)).json()
        assert ready["status"] == "ok" and ready["queues"]
        assert (await client.get("/healthz")).status_code == 200  # liveness stays public


# ---------------------------------------------------------------- ownership in the query
async def test_another_users_task_is_not_loaded_and_its_404_equals_a_missing_ones(
    api: tuple[httpx.AsyncClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, runtime = api
    theirs = failed_task(user_id="bob", parameters={"big": "x" * 50_000})
    await runtime.store.create(theirs)
    missing = str(uuid.uuid4())
    assert len(missing) == len(theirs.id)

    parsed: list[str] = []
    to_task = runtime.store._to_task  # type: ignore[attr-defined]

    def counting(row: Any) -> BackgroundTask:
        task: BackgroundTask = to_task(row)
        parsed.append(task.id)
        return task

    monkeypatch.setattr(runtime.store, "_to_task", counting)
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/children"), ("DELETE", "")]:
        foreign = await client.request(method, f"/api/v1/tasks/{theirs.id}{suffix}", headers=ALICE)
        absent = await client.request(method, f"/api/v1/tasks/{missing}{suffix}", headers=ALICE)
        assert foreign.status_code == absent.status_code == 404, (method, suffix, foreign.text)
        assert foreign.text == absent.text.replace(missing, theirs.id), (method, suffix)
        assert dict(foreign.headers) == dict(absent.headers), (method, suffix)
    assert parsed == []  # the foreign document was never loaded into a task

    r = await client.patch(f"/api/v1/tasks/{theirs.id}", json={"priority": 1}, headers=ALICE)
    assert r.status_code == 404
    assert parsed == []
    # Its owner and an operator still read it.
    assert (await client.get(f"/api/v1/tasks/{theirs.id}", headers=BOB)).status_code == 200
    assert (await client.get(f"/api/v1/tasks/{theirs.id}", headers=OLGA)).status_code == 200
