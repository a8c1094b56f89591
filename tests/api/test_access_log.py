"""The access log: one line per request with the route template, status, duration, user and client,
never a token, a query or a body — in-process against the real app and broker, and as JSON lines
from a real ``taskplatform api`` process (uvicorn's own access log off, no colour codes)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskplatform.logsetup import JsonFormatter, TextFormatter
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import OTHER_SECRET, SECRET, bearer, claims, hs256, token
from tests.support.api import client_of, served
from tests.support.server import ROOT, free_port, stop, wait_ready

pytestmark = pytest.mark.integration

ACCESS = "taskplatform.access"
CLIENT = ("203.0.113.7", 4711)
ALICE = token("alice")
OLGA = token("olga", "operator")
FORGED = hs256(claims("mallory", ("admin",)), OTHER_SECRET)  # well-formed, signed with the wrong key

Serve = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> Serve:
    """``async with serve(**settings) as client``: the API with JWT authentication (HS256), no
    worker, called from CLIENT's address."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        values: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET, **overrides}
        runtime = Runtime(make_settings(**values), role="api", registry=registry, relay=False)
        async with served(runtime) as app, client_of(app, address=CLIENT) as client:
            yield client

    return run


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


def _formatted(record: logging.LogRecord) -> tuple[dict[str, Any], str]:
    line = JsonFormatter().format(record)
    return json.loads(line), line + "\n" + TextFormatter().format(record)


def _no_secrets(text: str, *secrets: str) -> None:
    for secret in (ALICE, OLGA, FORGED, *secrets):
        assert secret not in text
        assert secret.split(".")[1] not in text  # not even the claims part of a token
    assert "bearer" not in text.lower() and "authorization" not in text.lower()


async def test_every_request_logs_one_line_with_route_template_status_user_and_client_and_no_token(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)
    missing = str(uuid.uuid4())
    body_marker, query_marker = f"body-{uuid.uuid4().hex}", f"query-{uuid.uuid4().hex}"
    async with serve() as client:
        answers = [
            await client.get("/api/v1/tasks", params={"tag": query_marker}, headers=bearer(ALICE)),
            await client.get(f"/api/v1/tasks/{missing}", headers=bearer(FORGED)),
            await client.get(f"/api/v1/tasks/{missing}"),
            await client.get("/api/v1/dead-letters", headers=bearer(ALICE)),
            await client.get(f"/api/v1/tasks/{missing}", headers=bearer(ALICE)),
            await client.get(f"/no/such/path/{missing}", headers=bearer(ALICE)),
            await client.post(
                "/api/v1/tasks", json={"parameters": {"x": body_marker}}, headers=bearer(ALICE)
            ),
            await client.post(
                "/api/v1/tasks",
                json={"task_type": "test_noop", "parameters": {}, "tags": [body_marker]},
                headers=bearer(ALICE),
            ),
        ]
    assert [a.status_code for a in answers] == [200, 401, 401, 403, 404, 404, 422, 201]
    lines = [_formatted(r) for r in _access(caplog)]
    expected = [
        ("GET", "/api/v1/tasks", 200, "alice"),
        ("GET", "/api/v1/tasks/{task_id}", 401, None),  # refused by the guard, before routing
        ("GET", "/api/v1/tasks/{task_id}", 401, None),
        ("GET", "/api/v1/dead-letters", 403, "alice"),
        ("GET", "/api/v1/tasks/{task_id}", 404, "alice"),
        ("GET", "unmatched", 404, None),
        ("POST", "/api/v1/tasks", 422, "alice"),
        ("POST", "/api/v1/tasks", 201, "alice"),
    ]
    assert [(d["method"], d["route"], d["status"], d["user_id"]) for d, _ in lines] == expected
    created = answers[-1].json()["task_id"]
    for (data, text), record in zip(lines, _access(caplog), strict=True):
        assert record.levelno == logging.INFO and data["level"] == "INFO" and data["logger"] == ACCESS
        assert data["client"] == CLIENT[0] and data["duration_ms"] >= 0
        assert f"{data['method']} {data['route']} {data['status']} " in data["message"]
        assert f"user={data['user_id'] or '-'} client={CLIENT[0]}" in data["message"]
        for absent in (missing, created, body_marker, query_marker):  # no raw path, query or body
            assert absent not in text
        _no_secrets(text)


async def test_successful_probes_are_debug_and_refused_ones_info(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)
    async with serve(protect_ops_endpoints=True) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics", headers=bearer(OLGA))).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/readyz", headers=bearer(ALICE))).status_code == 403
    seen = [
        (r.levelno, r.__dict__["route"], r.__dict__["status"], r.__dict__["user_id"]) for r in _access(caplog)
    ]
    assert seen == [
        (logging.DEBUG, "/healthz", 200, None),
        (logging.DEBUG, "/metrics", 200, "olga"),
        (logging.INFO, "/metrics", 401, None),
        (logging.INFO, "/readyz", 403, "alice"),
    ]


async def test_the_access_log_can_be_turned_off(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)
    async with serve(api_access_log=False) as client:
        assert (await client.get("/api/v1/tasks", headers=bearer(ALICE))).status_code == 200
        assert (await client.get("/api/v1/tasks")).status_code == 401
    assert _access(caplog) == []


def test_the_setting_reads_true_and_false_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PlatformSettings().api_access_log is True
    monkeypatch.setenv("TASKPLATFORM_API_ACCESS_LOG", "false")
    assert PlatformSettings().api_access_log is False


# ---------------------------------------------------------------- a real API process


def test_a_real_api_process_writes_one_json_access_line_per_request_and_nothing_of_uvicorns(
    tmp_path: Path,
) -> None:
    """``taskplatform api`` with ``LOG_JSON=true``: every stderr line is one JSON object; each
    request has exactly one access line (uvicorn's access log stays off), uvicorn's own lines carry
    no ``color_message``, and no token appears anywhere. Its broker is unreachable on purpose: the
    API serves without one, and leaves nothing on a real broker."""
    port = free_port()
    log_file = tmp_path / "api.log"
    env = {
        **os.environ,
        "TASKPLATFORM_AUTH": "jwt",
        "TASKPLATFORM_JWT_SECRET": SECRET,
        "TASKPLATFORM_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "TASKPLATFORM_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}",
        "TASKPLATFORM_LOG_LEVEL": "INFO",
        "TASKPLATFORM_LOG_JSON": "true",
        "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "1",
    }
    env.pop("TASKPLATFORM_API_ACCESS_LOG", None)  # the default: on
    base = f"http://127.0.0.1:{port}"
    missing = str(uuid.uuid4())
    with log_file.open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "taskplatform.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stderr=stderr,
        )
        try:
            wait_ready(proc, base, log_file, timeout=60, path="/healthz")
            with httpx.Client(base_url=base, timeout=10) as client:
                statuses = [
                    client.get("/api/v1/tasks", headers=bearer(ALICE)).status_code,
                    client.get(f"/api/v1/tasks/{missing}", headers=bearer(FORGED)).status_code,
                    client.get("/api/v1/dead-letters", headers=bearer(ALICE)).status_code,
                    client.get(f"/api/v1/tasks/{missing}", headers=bearer(ALICE)).status_code,
                    client.post("/api/v1/tasks", json={"parameters": {}}, headers=bearer(ALICE)).status_code,
                ]
        finally:
            stop(proc)
    assert statuses == [200, 401, 403, 404, 422]
    text = log_file.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [line for line in lines if line["logger"] == ACCESS]
    assert [(a["method"], a["route"], a["status"], a["user_id"]) for a in access] == [
        ("GET", "/api/v1/tasks", 200, "alice"),
        ("GET", "/api/v1/tasks/{task_id}", 401, None),
        ("GET", "/api/v1/dead-letters", 403, "alice"),
        ("GET", "/api/v1/tasks/{task_id}", 404, "alice"),
        ("POST", "/api/v1/tasks", 422, "alice"),
    ]  # the readiness polls of /healthz are DEBUG: not at INFO
    assert all(a["client"] == "127.0.0.1" and isinstance(a["duration_ms"], float) for a in access)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    assert [line for line in lines if line["logger"] == "uvicorn.error"], "uvicorn's own lines are kept"
    assert "color_message" not in text and "\\u001b" not in text and "\x1b" not in text
    assert missing not in text
    _no_secrets(text)
